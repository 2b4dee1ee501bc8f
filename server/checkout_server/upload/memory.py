"""The memory budget shared by all uploads of a process."""

from __future__ import annotations

import asyncio


class MemoryBudget:
    """A byte count shared by all uploads; `reserve` waits until enough is free."""

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._used = 0
        self._changed = asyncio.Condition()

    @property
    def used_bytes(self) -> int:
        return self._used

    async def reserve(self, amount: int) -> None:
        amount = min(amount, self._limit)  # one upload alone always fits
        async with self._changed:
            await self._changed.wait_for(lambda: self._used + amount <= self._limit)
            self._used += amount

    async def release(self, amount: int) -> None:
        amount = min(amount, self._limit)
        async with self._changed:
            self._used -= amount
            self._changed.notify_all()
