"""The shared loop supervisor (checkout_common.supervisor) with the server's error model:
an outage is a retriable ServiceError, logged as a warning with its reason and Russian text;
anything else is logged with its traceback.

Every background loop of both processes (the watch feed and result checks, the dependency
monitor, the relay's publishing loop and its helpers) runs under a `Supervisor`; start-up
steps wait for their dependencies with `retry_until`. Delays come from
`checkout_common.backoff.Backoff`, the schedule of the runner (and of the SDK's copy) too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from checkout_common import supervisor as common
from checkout_common.backoff import Schedule
from checkout_common.supervisor import LOOP_BACKOFF, STARTUP_BACKOFF, Outage

from .errors import ServiceError, is_retriable


def outage(exc: Exception) -> Outage | None:
    """A retriable ServiceError is an outage; anything else is a bug."""
    if is_retriable(exc):
        assert isinstance(exc, ServiceError)
        return Outage(reason=exc.reason, text=exc.text)
    return None


class Supervisor(common.Supervisor):
    """Runs a process's background loops and counts their failures (`failures[name]`)."""

    def __init__(self, *, backoff: Schedule = LOOP_BACKOFF) -> None:
        super().__init__(outage=outage, backoff=backoff)


async def retry_until(
    step: Callable[[], Awaitable[None]],
    *,
    timeout_s: float,
    what: str,
    retry_if: Callable[[BaseException], bool] = is_retriable,
    backoff: Schedule = STARTUP_BACKOFF,
) -> None:
    """Run `step` until it succeeds; a failure that `retry_if` accepts (by default a retriable
    ServiceError) is tried again after a backoff while `timeout_s` lasts, then raised."""
    await common.retry_until(
        step, what=what, retry_if=retry_if, timeout_s=timeout_s, backoff=backoff
    )
