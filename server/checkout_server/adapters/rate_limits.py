"""Per-client rate limits in this process's memory: uploads, CreateRequest calls and listings,
each a limit of its own (`MemoryUploadRateLimit`), and the budget of GetStatus's storage
checks (`MemoryCallBudget`). The counts live in one process: with several server replicas a
client may make up to the limit on each.

Counted here rather than with the `limits` library, which the service used before: its
in-memory storage starts a task at every hit that walks every client's key, and for a moving
window it moves each key's expiry check to a worker thread. With a thousand clients in the
last minute, 17 uploads a second took 74 % of a core in the limiter alone, and a GetStatus's
budget check 50 us (measured here). Here each client is an entry ordered by its last call,
oldest first: a call first drops the clients whose last call left the window, then counts in
its own, O(1) amortized whatever the number of clients, and the memory holds the clients of
the last window only.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

# The soonest retry a refused client is told, so it never spins on a window just leaving.
MIN_RETRY_AFTER_S = 0.05
WINDOW_S = 60.0


class MemoryUploadRateLimit:
    """Implements ports.UploadRateLimit: at most `per_minute` calls of one kind per client in
    any 60 seconds (a moving window). A refused client is told when the oldest call in its
    window leaves it."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._clients: OrderedDict[str, _Calls] = OrderedDict()  # by last attempt, oldest first

    async def admit(self, client: str) -> float | None:
        now = self._clock()
        since = now - WINDOW_S
        clients = self._clients
        while clients and next(iter(clients.values())).attempted <= since:
            clients.popitem(last=False)  # every call of it has left the window
        calls = clients.get(client)
        if calls is None:
            calls = clients[client] = _Calls()
        else:
            clients.move_to_end(client)
        calls.attempted = now
        times = calls.times
        while times and times[0] <= since:
            times.popleft()
        if len(times) >= self._per_minute:
            return max(times[0] + WINDOW_S - now, MIN_RETRY_AFTER_S)
        times.append(now)
        return None

    def __len__(self) -> int:
        """Clients with a call in the window, as of the last admit."""
        return len(self._clients)


@dataclass(slots=True)
class _Calls:
    attempted: float = 0.0
    times: deque[float] = field(default_factory=deque)  # admitted, oldest first


class MemoryCallBudget:
    """Implements ports.CallBudget: `per_second` of something per client, counted in windows
    of a second from a client's first use (a fixed window: nothing to keep but a count). The
    windows are entries by start, oldest first."""

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
