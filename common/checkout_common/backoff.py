"""The retry schedule of the server, the relay and the runner.

Capped exponential growth with "equal jitter": after the n-th failure in a row the wait is
uniform in [c/2, c] with c = min(max_s, initial_s * multiplier ** (n - 1)). At least half of
each step is kept, so a fixed number of attempts spans a predictable time (enough to ride out
a restart), while processes that failed together still spread out.

The SDK retries on the same schedule with a copy of its own (checkout_client.backoff, which
says why); tests/unit/test_common.py pins the two together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol


class Schedule(Protocol):
    """What a loop needs of a schedule: the wait after `failures` failures in a row."""

    def delay_s(self, failures: int) -> float: ...


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
    """The failures in a row of one retry loop that is not a supervised loop (it ends with an
    outcome, e.g. the runner's attempts at one event), and the wait each asks for."""

    def __init__(self, schedule: Schedule) -> None:
        self._schedule = schedule
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay_s(self) -> float:
        """Count a failure; the wait before the next try."""
        self.failures += 1
        return self._schedule.delay_s(self.failures)
