"""Retry delays and a wait that ends early when the runner stops.

The schedule is the SDK's (checkout_client.backoff, which the server's loops use too): capped
exponential growth with "equal jitter", the wait after the n-th failure in a row uniform in
[c/2, c] with c = min(max_s, initial_s * multiplier ** (n - 1)). The runner may not import the
SDK (import-linter: their contract is the envelope and the result), so this is a copy, and
tests/unit/test_process_contracts.py pins that both give the same waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial_s: float
    max_s: float
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("need 0 < initial_s <= max_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def ceiling_s(self, failures: int) -> float:
        """The longest wait after `failures` failures in a row (1-based)."""
        exponent = min(max(failures, 1) - 1, 64)  # bounded: no float overflow
        return min(self.max_s, self.initial_s * self.multiplier**exponent)

    def delay_s(self, failures: int) -> float:
        """The wait after `failures` failures in a row (1-based), jittered."""
        ceiling = self.ceiling_s(failures)
        return random.uniform(ceiling / 2, ceiling)  # jitter, not crypto


class Retries:
    """The failures in a row of one loop, and the wait each asks for."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay_s(self) -> float:
        """Count a failure; the wait before the next try."""
        self.failures += 1
        return self._backoff.delay_s(self.failures)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
