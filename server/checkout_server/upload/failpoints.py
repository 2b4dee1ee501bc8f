"""Crash points for tests: UPLOAD_FAILPOINT names a point of a resumable upload at which the
process kills itself with SIGKILL (no cleanup, no graceful stop), as a power cut there would.
Production leaves it empty, and `passes` then does nothing.

Points, in the order an upload reaches them: `after_part` (a part is in the multipart upload,
not committed), `after_commit` (its commit document is written), `after_complete` (the object
is complete, no event yet), `after_outbox` (the event is written, not yet answered).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)

POINTS = frozenset({"after_part", "after_commit", "after_complete", "after_outbox"})

Failpoint = Callable[[str], None]


def no_failpoint(point: str) -> None:
    """The production failpoint: nothing happens."""


def kill_at(chosen: str) -> Failpoint:
    """A failpoint that SIGKILLs this process when an upload passes `chosen`."""
    if chosen not in POINTS:
        raise ValueError(f"unknown failpoint {chosen!r}")

    def passes(point: str) -> None:
        if point == chosen:
            log.warning("failpoint reached: killing the process", extra={"failpoint": point})
            os.kill(os.getpid(), signal.SIGKILL)

    return passes
