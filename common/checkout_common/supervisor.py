"""Background loops that cannot die silently, and steps that wait for their dependencies.

Every background loop of the server, the relay and the runner runs one *round* at a time
under a `Supervisor`: a round returns how long to wait before the next one; an exception
from a round is logged (an outage, as the process's `outage` rule tells it, as a warning with
its reason; anything else with its traceback), counted per loop, and the round is tried
again after a backoff. Only cancellation, or the loop's `stop` event, ends a loop.

Each process brings its error model as the `outage` rule: the server's is a retriable
ServiceError (checkout_server.supervisor binds it), the runner's a retriable RunnerError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .backoff import Backoff, Schedule

log = logging.getLogger(__name__)

# A round returns the seconds to wait before the next round (0: at once).
Round = Callable[[], Awaitable[float]]

LOOP_BACKOFF = Backoff(initial_s=0.2, max_s=5.0)
STARTUP_BACKOFF = Backoff(initial_s=0.2, max_s=5.0)


@dataclass(frozen=True)
class Outage:
    """A failure that trying again may cure (a dependency down or slow): logged as a warning
    with its stable reason, without a traceback."""

    reason: str
    text: str


# Tells an outage from a bug: the outage's reason and text, or None (logged with a traceback).
OutageRule = Callable[[Exception], Outage | None]


class Supervisor:
    """Runs a process's background loops and counts their failures (`failures[name]`);
    `on_failure(name)` is called at each one too (a metric of the process's own)."""

    def __init__(
        self,
        *,
        outage: OutageRule,
        backoff: Schedule = LOOP_BACKOFF,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._outage = outage
        self._backoff = backoff
        self._on_failure = on_failure
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
                if self._on_failure is not None:
                    self._on_failure(name)
                pause = self._backoff.delay_s(failures)
                _log_failure(name, exc, self._outage(exc), pause)
            else:
                failures = 0
            await wait_or_stop(stop, pause)

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


def _log_failure(name: str, exc: Exception, outage: Outage | None, retry_in_s: float) -> None:
    extra = {"loop": name, "retry_in_s": round(retry_in_s, 2)}
    if outage is not None:
        log.warning("%s: %s", name, outage.text, extra=extra | {"reason": outage.reason})
    else:
        log.error("%s failed; retrying", name, exc_info=exc, extra=extra)


async def wait_or_stop(stop: asyncio.Event | None, seconds: float) -> None:
    """Wait `seconds`, or less when `stop` is set meanwhile; 0 or less only lets others run."""
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
    what: str,
    retry_if: Callable[[BaseException], bool],
    timeout_s: float | None,
    backoff: Schedule = STARTUP_BACKOFF,
    stop: asyncio.Event | None = None,
) -> bool:
    """Run `step` until it succeeds (True); a failure that `retry_if` accepts is tried again
    after a backoff while `timeout_s` lasts (None: for as long as it takes), then raised; any
    other failure is raised at once. False when `stop` is set first. For start-up (dependencies
    may still be starting, e.g. under docker compose) and for clean-ups that must outlive an
    outage."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    failures = 0
    while stop is None or not stop.is_set():
        try:
            await step()
            return True
        except Exception as exc:
            if _being_cancelled():
                raise asyncio.CancelledError from exc
            failures += 1
            delay = backoff.delay_s(failures)
            if not retry_if(exc) or (deadline is not None and time.monotonic() + delay > deadline):
                raise
            log.warning("%s: retrying in %.1f s: %r", what, delay, exc)
            await wait_or_stop(stop, delay)
    return False
