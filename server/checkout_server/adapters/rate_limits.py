"""Per-client rate limits in this process's memory: uploads, CreateRequest calls, listings,
each a limit of its own, with the `limits` library; and the budget of GetStatus's storage
checks (`MemoryCallBudget`, which says why it counts on its own).

A moving window: at most `per_minute` calls in any 60 seconds. A refused client is told when
the oldest call in its window leaves it. The counts live in one process: with several server
replicas a client may make up to `per_minute` on each.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

# The soonest retry a refused client is told, so it never spins on a window just leaving.
MIN_RETRY_AFTER_S = 0.05


class MemoryUploadRateLimit:
    """Implements ports.UploadRateLimit: `per_minute` calls of one kind (`scope`) per client."""

    def __init__(
        self, per_minute: int, *, scope: str = "upload", clock: Callable[[], float] = time.time
    ) -> None:
        self._item = RateLimitItemPerMinute(per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._scope = scope
        self._clock = clock

    async def admit(self, client: str) -> float | None:
        if await self._limiter.hit(self._item, self._scope, client):
            return None
        stats = await self._limiter.get_window_stats(self._item, self._scope, client)
        return max(stats.reset_time - self._clock(), MIN_RETRY_AFTER_S)


class MemoryCallBudget:
    """Implements ports.CallBudget: `per_second` of something per client, counted in windows
    of a second from a client's first use.

    Counted here rather than with `limits` (as the per-minute limits are): its in-memory
    storage starts a task at every hit that walks every client's key, 7 us a hit with one
    client and 50 us with a thousand in the window (measured here), on the path of every
    GetStatus. Here each client's window is an entry, oldest first: a take drops the windows
    that ended, then counts in its client's, O(1) amortized whatever the number of clients,
    and the memory holds the clients of the last second only."""

    def __init__(self, per_second: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._clock = clock
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # by start, oldest first

    async def take(self, client: str) -> bool:
        now = self._clock()
        windows = self._windows
        while windows:
            oldest = next(iter(windows.values()))
            if now - oldest.start < 1.0:
                break
            windows.popitem(last=False)
        window = windows.get(client)
        if window is None:
            windows[client] = _Window(now)
            return True
        if window.used >= self._per_second:
            return False
        window.used += 1
        return True

    def __len__(self) -> int:
        """Clients whose window has not ended, as of the last take."""
        return len(self._windows)


@dataclass(slots=True)
class _Window:
    start: float
    used: int = 1
