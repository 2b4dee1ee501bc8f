"""Retry delays (doubling, capped) and a wait that ends early when the runner stops."""

from __future__ import annotations

import asyncio
import contextlib


class Backoff:
    def __init__(self, initial_s: float, max_s: float) -> None:
        self._initial_s, self._max_s = initial_s, max_s
        self.delay_s = initial_s

    def reset(self) -> None:
        self.delay_s = self._initial_s

    async def wait(self, stop: asyncio.Event) -> None:
        """Wait the current delay (or until `stop`), then double it."""
        await wait_or_stop(stop, self.delay_s)
        self.delay_s = min(self.delay_s * 2, self._max_s)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
