"""The runner's consumer loop: offsets committed only after a batch's results are stored,
never for a batch cut short by a stop; a failing round is retried."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from checkout_runner.consumer import ConsumerLoop
from checkout_runner.domain import ConsumedRecord
from checkout_runner.errors import ConsumerUnavailable
from checkout_runner.metrics import RunnerMetrics
from checkout_runner.processor import Handled
from tests.runner_fakes import FakeSource

pytestmark = pytest.mark.timeout(10)


def delivery(offset: int) -> ConsumedRecord:
    return ConsumedRecord(
        topic="t", partition=offset % 2, offset=offset, value=json.dumps({}).encode()
    )


class Processor:
    """Stands in for the processor: finishes at once, or waits for `gate` when given."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.handled: list[int] = []
        self.gate = gate

    async def handle(self, d: ConsumedRecord, stop: asyncio.Event) -> Handled:
        if self.gate is not None:
            waiter = asyncio.create_task(self.gate.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if not self.gate.is_set():
                return Handled.STOPPED
        self.handled.append(d.offset)
        return Handled.OK


def loop(source: Any, processor: Processor, metrics: RunnerMetrics | None = None) -> ConsumerLoop:
    return ConsumerLoop(
        source=source,
        processor=processor,  # type: ignore[arg-type]
        metrics=metrics or RunnerMetrics(),
        concurrency=2,
        retry_initial_s=0.01,
        retry_max_s=0.02,
    )


async def test_each_batch_is_committed_after_all_of_it_is_handled() -> None:
    source = FakeSource([[delivery(0), delivery(1)], [delivery(2)]])
    processor, stop = Processor(), asyncio.Event()
    task = asyncio.create_task(loop(source, processor).run(stop))
    await asyncio.wait_for(source.drained.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert processor.handled == [0, 1, 2]
    assert [[d.offset for d in batch] for batch in source.committed] == [[0, 1], [2]]
    assert source.released == 2


async def test_a_batch_cut_short_by_a_stop_is_not_committed() -> None:
    source = FakeSource([[delivery(0)]])
    processor, stop = Processor(gate=asyncio.Event()), asyncio.Event()
    task = asyncio.create_task(loop(source, processor).run(stop))
    await asyncio.wait_for(source.handed_out.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert source.committed == []
    assert source.released == 1  # the hold on its partitions is let go all the same


async def test_a_failing_round_is_counted_and_retried() -> None:
    source = FakeSource([[delivery(0)]])
    source.errors = [ConsumerUnavailable("down"), RuntimeError("a bug")]
    metrics, processor, stop = RunnerMetrics(), Processor(), asyncio.Event()
    task = asyncio.create_task(loop(source, processor, metrics).run(stop))
    await asyncio.wait_for(source.drained.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert processor.handled == [0]
    assert metrics.registry.get_sample_value("checkout_runner_loop_failures_total") == 2
    assert metrics.registry.get_sample_value("checkout_runner_assigned_partitions") == 3


async def test_a_lag_that_cannot_be_measured_is_counted_and_told_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gauge's loop never stops the runner; its failures count as loop failures, the
    first of a run is a warning (not a DEBUG line nobody sees), and the recovery is told."""
    source = FakeSource([])
    source.lag_errors = [ConsumerUnavailable("down") for _ in range(3)]
    source.lag_watch = 4  # the first answer after the three failures
    metrics, stop = RunnerMetrics(), asyncio.Event()
    consumer = ConsumerLoop(
        source=source,
        processor=Processor(),  # type: ignore[arg-type]
        metrics=metrics,
        concurrency=1,
        lag_interval_s=0.01,
    )
    with caplog.at_level("INFO", logger="checkout_runner.consumer"):
        task = asyncio.create_task(consumer.run(stop))
        await asyncio.wait_for(source.lag_seen.wait(), 5)
        stop.set()
        await asyncio.wait_for(task, 5)

    assert metrics.registry.get_sample_value("checkout_runner_loop_failures_total") == 3
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["consumer lag not measured"]
    assert any(r.getMessage() == "consumer lag measured again" for r in caplog.records)
