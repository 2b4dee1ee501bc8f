"""The consumer loop: batches of up to RUNNER_CONCURRENCY records, processed at once, their
offsets committed only after every result of the batch is stored. The loop and the lag
gauge's run under the shared loop supervisor (checkout_common.supervisor): a round that fails
(Kafka unreachable, a bug) is logged (an outage as a warning with its reason, a bug with its
traceback), counted and retried after a backoff; only `stop` ends the loop. A batch cut short
by `stop` is not committed: the group delivers it again (to this runner after a restart, or
to another member)."""

from __future__ import annotations

import asyncio
import logging

from checkout_common.backoff import Backoff
from checkout_common.supervisor import Outage, Supervisor

from .errors import RunnerError
from .metrics import RunnerMetrics
from .ports import EventSource
from .processor import Handled, Processor

log = logging.getLogger(__name__)

_POLL_TIMEOUT_S = 1.0


def outage(exc: Exception) -> Outage | None:
    """The runner's rule for its loops: a retriable RunnerError is an outage."""
    if isinstance(exc, RunnerError) and exc.retriable:
        return Outage(reason=exc.reason, text=exc.message)
    return None


class ConsumerLoop:
    def __init__(
        self,
        *,
        source: EventSource,
        processor: Processor,
        metrics: RunnerMetrics,
        concurrency: int,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        lag_interval_s: float = 5.0,
    ) -> None:
        self._source = source
        self._processor = processor
        self._metrics = metrics
        self._concurrency = concurrency
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._lag_interval_s = lag_interval_s
        self._lag_failing = False
        metrics.assigned.set_function(source.assigned)

    async def run(self, stop: asyncio.Event) -> None:
        supervisor = Supervisor(
            outage=outage,
            backoff=Backoff(self._retry_initial_s, self._retry_max_s),
            on_failure=lambda _loop: self._metrics.loop_failures.inc(),
        )
        supervisor.spawn("runner-lag", self._measure_lag)
        try:
            await supervisor.run("runner-consumer", lambda: self._round(stop), stop)
        finally:
            await supervisor.stop()

    async def _round(self, stop: asyncio.Event) -> float:
        batch = await self._source.next_batch(
            max_records=self._concurrency, timeout_s=_POLL_TIMEOUT_S
        )
        if not batch:
            return 0.0
        done = False
        try:
            outcomes = await asyncio.gather(*(self._processor.handle(d, stop) for d in batch))
            done = Handled.STOPPED not in outcomes
        finally:
            committed = await self._source.finish(batch, commit=done)
        if done and not committed:
            log.warning("batch processed but not committed: the group will deliver it again")
        return 0.0

    async def _measure_lag(self) -> float:
        """One reading of the lag gauge; the next in lag_interval_s. A failure is counted as a
        loop failure but handled here rather than by the supervisor: the gauge's loop keeps
        its interval, and only the first failure of a run is logged (a warning), the recovery
        too."""
        try:
            self._metrics.lag.set(await self._source.lag())
        except Exception as exc:
            self._metrics.loop_failures.inc()
            if not self._lag_failing:
                log.warning("consumer lag not measured: %r", exc, exc_info=True)
            self._lag_failing = True
        else:
            if self._lag_failing:
                log.info("consumer lag measured again")
            self._lag_failing = False
        return self._lag_interval_s
