"""The consumer loop: batches of up to RUNNER_CONCURRENCY records, processed at once, their
offsets committed only after every result of the batch is stored. A round that fails (Kafka
unreachable, a bug) is logged with its traceback, counted and retried after a backoff; only
`stop` ends the loop. A batch cut short by `stop` is not committed: the group delivers it
again (to this runner after a restart, or to another member)."""

from __future__ import annotations

import asyncio
import logging

from .backoff import Backoff, Retries, wait_or_stop
from .errors import RunnerError
from .metrics import RunnerMetrics
from .ports import EventSource
from .processor import Handled, Processor

log = logging.getLogger(__name__)

_POLL_TIMEOUT_S = 1.0


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
        metrics.assigned.set_function(source.assigned)

    async def run(self, stop: asyncio.Event) -> None:
        lag_task = asyncio.create_task(self._measure_lag(stop), name="runner-lag")
        try:
            retries = Retries(Backoff(self._retry_initial_s, self._retry_max_s))
            while not stop.is_set():
                try:
                    await self._round(stop)
                    retries.reset()
                except Exception as exc:
                    self._metrics.loop_failures.inc()
                    delay_s = retries.next_delay_s()
                    if isinstance(exc, RunnerError) and exc.retriable:
                        log.warning(
                            "consumer round failed (%s), retrying in %.1f s: %s",
                            exc.reason,
                            delay_s,
                            exc.message,
                        )
                    else:
                        log.exception("consumer round failed, retrying in %.1f s", delay_s)
                    await wait_or_stop(stop, delay_s)
        finally:
            lag_task.cancel()
            await asyncio.gather(lag_task, return_exceptions=True)

    async def _round(self, stop: asyncio.Event) -> None:
        batch = await self._source.next_batch(
            max_records=self._concurrency, timeout_s=_POLL_TIMEOUT_S
        )
        if not batch:
            return
        done = False
        try:
            outcomes = await asyncio.gather(*(self._processor.handle(d, stop) for d in batch))
            done = Handled.STOPPED not in outcomes
        finally:
            committed = await self._source.finish(batch, commit=done)
        if done and not committed:
            log.warning("batch processed but not committed: the group will deliver it again")

    async def _measure_lag(self, stop: asyncio.Event) -> None:
        """The lag gauge every lag_interval_s. A failure never stops the runner (nor this
        loop); the first of a run is logged as a warning, the recovery too."""
        failing = False
        while not stop.is_set():
            try:
                self._metrics.lag.set(await self._source.lag())
            except Exception as exc:
                self._metrics.loop_failures.inc()
                if not failing:
                    log.warning("consumer lag not measured: %r", exc, exc_info=True)
                failing = True
            else:
                if failing:
                    log.info("consumer lag measured again")
                failing = False
            await wait_or_stop(stop, self._lag_interval_s)
