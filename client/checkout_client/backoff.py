"""Backoff: the retry delay schedule of the SDK.

Capped exponential growth with "equal jitter": after the n-th failure in a row the wait is
uniform in [c/2, c] with c = min(max_s, initial_s * multiplier ** (n - 1)). At least half of
each step is kept, so a fixed number of attempts spans a predictable time (enough to ride out
a restart), while clients that failed together still spread out.

The server, the relay and the runner retry on the same schedule from checkout-common
(checkout_common.backoff); this is a copy, on purpose. The SDK is what external users
install, alone (`pip install client/`, tests/integration/test_sdk_alone.py), and it ships
with gRPC, protobuf and rich only: depending on checkout-common would make them install a
second distribution that is not on PyPI, and bring them its pydantic-settings, to save
twenty lines that have not changed since they were written. tests/unit/test_common.py pins
this copy to the shared one (same ceilings, same jitter bounds, same refusals).
"""

from __future__ import annotations

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
