"""The memory budget shared by all uploads of a process."""

from __future__ import annotations

import asyncio


class MemoryBudget:
    """A byte count shared by all uploads; `reserve` waits (for a while) until enough is free."""

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._used = 0
        self._changed = asyncio.Condition()

    @property
    def used_bytes(self) -> int:
        return self._used

    async def reserve(self, amount: int, *, wait_s: float | None = None) -> bool:
        """Reserve `amount` (at most the whole budget: one upload alone always fits), waiting
        `wait_s` at most (None: for ever) while it does not fit; False when it still did not
        (nothing is reserved then)."""
        amount = min(amount, self._limit)
        async with self._changed:
            try:
                async with asyncio.timeout(wait_s):
                    await self._changed.wait_for(lambda: self._used + amount <= self._limit)
            except TimeoutError:
                return False
            self._used += amount
            return True

    async def release(self, amount: int) -> None:
        amount = min(amount, self._limit)
        async with self._changed:
            self._used -= amount
            self._changed.notify_all()
