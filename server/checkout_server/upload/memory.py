"""The memory budget shared by all uploads of a process, and one stream's share of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class MemoryBudget:
    """A byte count shared by all uploads; `reserve` waits (for a while) until enough is free."""

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._used = 0
        self._changed = asyncio.Condition()

    @property
    def limit_bytes(self) -> int:
        return self._limit

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


class StreamMemory:
    """What one stream holds of a `MemoryBudget`: reserved in granules as its buffers fill
    (`hold`), given back as its parts are stored (`free`) and whole when it ends (`close`).

    A stream thus holds what it buffers, rounded up to a granule, never what it might: a
    stream that sent 4 KiB and stopped holds one granule. Growing waits `wait_s` at most while
    the budget is spent, then raises `busy()`: a stream may be refused half-way, after some of
    its parts were stored, which a resumable write resumes and an UploadVideo retries."""

    def __init__(
        self,
        budget: MemoryBudget,
        *,
        granule_bytes: int,
        wait_s: float | None,
        busy: Callable[[], Exception],
    ) -> None:
        self._budget = budget
        self._granule = granule_bytes
        self._wait_s = wait_s
        self._busy = busy
        self._buffered = 0
        self._reserved = 0

    async def hold(self, nbytes: int) -> None:
        """Count `nbytes` more buffered, reserving the granules they need first; raises
        `busy()` (and counts nothing) when the budget stays spent for `wait_s`."""
        # At most the whole budget, as MemoryBudget.reserve: one stream alone always fits.
        need = min(
            self._rounded(self._buffered + nbytes) - self._reserved,
            self._budget.limit_bytes - self._reserved,
        )
        if need > 0:
            # A part stored meanwhile may free some (`free` runs in the part's task): what is
            # then reserved beyond the need goes back with the next `free`.
            if not await self._budget.reserve(need, wait_s=self._wait_s):
                raise self._busy()
            self._reserved += need
        self._buffered += nbytes

    async def free(self, nbytes: int) -> None:
        """`nbytes` buffered are no longer held (their part is stored): give back the granules
        nothing buffered needs."""
        self._buffered -= nbytes
        surplus = self._reserved - self._rounded(self._buffered)
        if surplus > 0:
            self._reserved -= surplus
            await self._budget.release(surplus)

    async def close(self) -> None:
        """Give back everything (the stream has ended)."""
        self._buffered = 0
        await self.free(0)

    def _rounded(self, nbytes: int) -> int:
        return -(-nbytes // self._granule) * self._granule
