"""Per-client rate limits in this process's memory, with the `limits` library: uploads,
CreateRequest calls, listings, each a limit of its own; and the budget of GetStatus's storage
checks.

A moving window: at most `per_minute` calls in any 60 seconds. A refused client is told when
the oldest call in its window leaves it. The counts live in one process: with several server
replicas a client may make up to `per_minute` on each.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

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
    of a second from a client's first use (a fixed window: no wait to compute, and the moving
    window's in-memory storage moves each expiry check to a thread, a cost per call)."""

    def __init__(self, per_second: int, *, scope: str) -> None:
        self._item = RateLimitItemPerSecond(per_second)
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._scope = scope

    async def take(self, client: str) -> bool:
        return await self._limiter.hit(self._item, self._scope, client)
