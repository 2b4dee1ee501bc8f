"""The watch hub's wake-ups: a change announced with `wake()` reaches watchers at once, long
before the safety-net poll, and a flood of wake-ups costs at most one query per gap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from checkout_client.backoff import Backoff
from checkout_server.domain import OutboxEvent
from checkout_server.status.watch import WatchHub
from checkout_server.supervisor import Supervisor
from tests.fakes import FakeOutbox, FakeStatusRecords, FakeStorage, status_service
from tests.helpers import outbox_event

pytestmark = pytest.mark.timeout(20)

# The safety net is far beyond every test's timeout: what arrives came with a wake-up.
NEVER_S = 3600.0


class CountingRecords(FakeStatusRecords):
    """Counts the change-feed queries the hub makes."""

    def __init__(self, events: dict[str, OutboxEvent]) -> None:
        super().__init__(events)
        self.feed_queries = 0
        self.queried = asyncio.Event()

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        self.feed_queries += 1
        self.queried.set()
        return await super().changed_since(since, limit=limit)


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(backoff=Backoff(0.01, 0.02))
    yield supervisor
    await supervisor.stop()


def build_hub(
    outbox: FakeOutbox, records: CountingRecords, supervisor: Supervisor, *, min_gap_s: float
) -> WatchHub:
    status = status_service(FakeStorage(), outbox, records=records)
    return WatchHub(
        records=records,
        status=status,
        supervisor=supervisor,
        poll_interval_s=NEVER_S,
        poll_min_gap_s=min_gap_s,
        result_check_interval_s=NEVER_S,
        reconcile_interval_s=NEVER_S,
        max_pending=100,
    )


async def test_a_woken_hub_delivers_a_change_without_waiting_for_the_safety_net(
    supervisor: Supervisor,
) -> None:
    outbox = FakeOutbox()
    records = CountingRecords(outbox.events)
    hub = build_hub(outbox, records, supervisor, min_gap_s=0.01)
    hub.start()
    try:
        with hub.subscribe(None) as subscription:
            await asyncio.wait_for(records.queried.wait(), 5)  # the first look, on subscribing
            for n in range(3):
                await outbox.add(outbox_event(f"e{n}"))
                hub.wake()
                changes = await subscription.next(timeout_s=5)
                assert [c.event_id for c in changes] == [f"e{n}"]
    finally:
        await hub.stop()
    # One look at the start and one per wake-up: none in between.
    assert records.feed_queries == 4


async def test_an_unwoken_hub_does_not_query(supervisor: Supervisor) -> None:
    outbox = FakeOutbox()
    records = CountingRecords(outbox.events)
    hub = build_hub(outbox, records, supervisor, min_gap_s=0.01)
    hub.start()
    try:
        with hub.subscribe(None) as subscription:
            await asyncio.wait_for(records.queried.wait(), 5)
            await outbox.add(outbox_event("unannounced"))
            # No wake-up: within this wait the hub makes no query and delivers nothing.
            assert await subscription.next(timeout_s=0.5) == []
            assert records.feed_queries == 1
            hub.wake()
            changes = await subscription.next(timeout_s=5)
            assert [c.event_id for c in changes] == ["unannounced"]
    finally:
        await hub.stop()


async def test_a_flood_of_wake_ups_costs_at_most_one_query_per_gap(
    supervisor: Supervisor,
) -> None:
    outbox = FakeOutbox()
    records = CountingRecords(outbox.events)
    gap_s = 0.2
    hub = build_hub(outbox, records, supervisor, min_gap_s=gap_s)
    hub.start()
    try:
        with hub.subscribe(None) as subscription:
            await asyncio.wait_for(records.queried.wait(), 5)
            began = time.monotonic()
            for n in range(100):  # a wake-up every 10 ms, as a burst of uploads sends them
                await outbox.add(outbox_event(f"burst-{n}"))
                hub.wake()
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - began
            seen: set[str] = set()
            while len(seen) < 100:
                seen |= {c.event_id for c in await subscription.next(timeout_s=5)}
    finally:
        await hub.stop()
    # Every change arrived, with no more looks than the gap allows (plus the first and last).
    assert seen == {f"burst-{n}" for n in range(100)}
    assert records.feed_queries <= elapsed / gap_s + 3
    assert records.feed_queries >= 3  # and it did look during the burst, not only after it
