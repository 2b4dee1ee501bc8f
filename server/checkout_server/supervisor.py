"""Background loops that cannot die silently, and start-up steps that wait for dependencies.

Every background loop of both processes (the watch feed and result checks, the dependency
monitor, the relay's publishing loop and its helpers) runs one *round* at a time under a
`Supervisor`: a round returns how long to wait before the next one; an exception from a round
is logged (a retriable ServiceError as a warning with its reason, anything else with its
traceback), counted per loop, and the round is tried again after a backoff. Only cancellation,
or the loop's `stop` event, ends a loop.

Delays come from `checkout_client.backoff.Backoff`, the schedule the SDK retries with too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from checkout_client.backoff import Backoff

from .errors import ServiceError, is_retriable

log = logging.getLogger(__name__)

# A round returns the seconds to wait before the next round (0: at once).
Round = Callable[[], Awaitable[float]]

LOOP_BACKOFF = Backoff(initial_s=0.2, max_s=5.0)
STARTUP_BACKOFF = Backoff(initial_s=0.2, max_s=5.0)


class Supervisor:
    """Runs a process's background loops and counts their failures (`failures[name]`)."""

    def __init__(self, *, backoff: Backoff = LOOP_BACKOFF) -> None:
        self._backoff = backoff
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures: Counter[str] = Counter()

    def spawn(self, name: str, round_: Round) -> asyncio.Task[None]:
        """Run `round_` again and again in a task of its own until `stop()` cancels it."""
        task = asyncio.create_task(self.run(name, round_), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self, name: str, round_: Round, stop: asyncio.Event | None = None) -> None:
        """Run `round_` until `stop` is set (after the round in progress) or the caller is
        cancelled. Never returns early because a round raised."""
        failures = 0
        while stop is None or not stop.is_set():
            try:
                pause = await round_()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _being_cancelled():
                    # A library turned our cancellation into an error of its own (PyMongo's
                    # async API raises an AutoReconnect subclass): stop as asked.
                    raise asyncio.CancelledError from exc
                failures += 1
                self.failures[name] += 1
                pause = self._backoff.delay_s(failures)
                _log_failure(name, exc, pause)
            else:
                failures = 0
            await _pause(stop, pause)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel every spawned loop and wait for them to end (at most `timeout_s`; a loop
        still running then is left behind and logged)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            log.error("background loop did not stop", extra={"loop": task.get_name()})


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _log_failure(name: str, exc: Exception, retry_in_s: float) -> None:
    extra = {"loop": name, "retry_in_s": round(retry_in_s, 2)}
    if is_retriable(exc):
        assert isinstance(exc, ServiceError)
        log.warning("%s: %s", name, exc.text, extra=extra | {"reason": exc.reason})
    else:
        log.error("%s failed; retrying", name, exc_info=exc, extra=extra)


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    if seconds <= 0:
        await asyncio.sleep(0)  # let others run between rounds that never wait
        return
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def retry_until(
    step: Callable[[], Awaitable[None]],
    *,
    timeout_s: float,
    what: str,
    retry_if: Callable[[BaseException], bool] = is_retriable,
    backoff: Backoff = STARTUP_BACKOFF,
) -> None:
    """Run `step` until it succeeds; a failure that `retry_if` accepts is tried again after a
    backoff while `timeout_s` lasts, then raised. For start-up (dependencies may still be
    starting, e.g. under docker compose) and for clean-ups that must outlive an outage."""
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        try:
            await step()
            return
        except Exception as exc:
            failures += 1
            delay = backoff.delay_s(failures)
            if not retry_if(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: retrying in %.1f s: %r", what, delay, exc)
            await asyncio.sleep(delay)
