"""The relay's step and loop with in-memory fakes: leases held and lost, publish failures,
permanent failures, and a loop that survives a failing round."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from datetime import datetime

import pytest

from checkout_client.backoff import Backoff
from checkout_server.domain import EventStatus
from checkout_server.errors import DatabaseUnavailable
from checkout_server.relay.leases import LeaseManager
from checkout_server.relay.metrics import RelayMetrics
from checkout_server.relay.ports import Lease, PendingEvent
from checkout_server.relay.relay import Relay, RelayConfig
from checkout_server.supervisor import Supervisor
from tests.fakes import T0, FakeClock, FakeLeaseStore, FakePublisher, FakeRelayStore, ids
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(10)

SHARDS = 4


class Harness:
    def __init__(self, *, lease_ttl_s: float = 6) -> None:
        self.clock = FakeClock()
        self.store = FakeRelayStore()
        self.lease_store = FakeLeaseStore()
        self.publisher = FakePublisher()
        self.metrics = RelayMetrics()
        self.supervisor = Supervisor(backoff=Backoff(0.01, 0.02))
        self.metrics.loop_failures = self.supervisor.failures
        self.leases = LeaseManager(
            self.lease_store,
            member="me",
            shards=SHARDS,
            ttl_s=lease_ttl_s,
            skew_s=1,
            clock=self.clock,
        )
        self.relay = self.relay_with(
            RelayConfig(shards=SHARDS, batch_size=50, poll_interval_s=0.02)
        )

    def relay_with(self, config: RelayConfig) -> Relay:
        """A relay over the harness's stores, publisher and leases, configured by `config`."""
        return Relay(
            store=self.store,
            leases=self.leases,
            publisher=self.publisher,
            metrics=self.metrics,
            config=config,
            clock=self.clock,
            supervisor=self.supervisor,
        )


async def holding_every_shard(h: Harness) -> Harness:
    await h.leases.rebalance()  # alone: it takes every shard
    assert h.leases.valid_shards() == frozenset(range(SHARDS))
    return h


@pytest.fixture
async def harness() -> Harness:
    return await holding_every_shard(Harness())


# Far beyond any test's bounds: the idle relay's safety-net poll, and (through leases that
# last three times as long) its next rebalance, which the fake clock never reaches anyway.
SAFETY_NET_S = 3600.0


@pytest.fixture
async def quiet_harness() -> Harness:
    """A harness whose idle relay, pushed, waits SAFETY_NET_S: only a wake-up ends its wait
    within a test (the idle wait is the shorter of the safety net and the time to the next
    rebalance, a third of the lease TTL)."""
    return await holding_every_shard(Harness(lease_ttl_s=3 * SAFETY_NET_S))


async def test_a_held_lease_publishes_and_marks_sent(harness: Harness) -> None:
    events = list(ids("held", 5))
    for event_id in events:
        harness.store.add(event_id)

    handled, pause = await harness.relay.step()

    assert (handled, pause) == (5, 0.0)
    assert sorted(harness.publisher.published_ids()) == events
    assert {harness.store.status_of(e) for e in events} == {"sent"}
    assert harness.metrics.published_total == 5
    value = json.loads(harness.publisher.published[0].value)
    assert value["event_id"] == harness.publisher.published_ids()[0]


async def test_a_lost_lease_publishes_nothing_of_that_shard(harness: Harness) -> None:
    events = list(ids("lost", 40))
    for event_id in events:
        harness.store.add(event_id)
    # Another relay took shard 0 over (a newer epoch) after this one's last renewal.
    epoch = harness.leases.epoch_of(0)
    assert epoch is not None
    await harness.lease_store.insert_lease(
        Lease(shard=0, epoch=epoch + 1, owner="other", expires_at=T0)
    )
    lost = [e for e in events if harness.relay._shard(harness.store.messages[e].event) == 0]
    assert lost, "the ids must fall into shard 0 too"

    await harness.relay.step()

    assert not set(lost) & set(harness.publisher.published_ids())
    assert {harness.store.status_of(e) for e in lost} == {"new"}
    assert sorted(harness.publisher.published_ids()) == sorted(set(events) - set(lost))
    assert 0 not in harness.leases.valid_shards()
    assert harness.leases.lost_total == 1


async def test_a_lease_that_ran_out_publishes_nothing(harness: Harness) -> None:
    harness.store.add("late-1")
    harness.clock.advance(6)  # past ttl - skew without a renewal

    assert await harness.relay.step() == (0, 0.0)
    assert harness.publisher.published == []
    assert harness.store.status_of("late-1") == "new"


async def test_kafka_down_reschedules_with_backoff(harness: Harness) -> None:
    events = list(ids("down", 3))
    for event_id in events:
        harness.store.add(event_id)
    harness.publisher.unavailable = True

    handled, pause = await harness.relay.step()

    assert handled == 3
    assert 0.25 <= pause <= 0.5  # RelayConfig's first backoff step (0.5 s, jittered)
    for event_id in events:
        message = harness.store.messages[event_id]
        assert (message.status, message.attempts) == ("new", 1)
        assert message.next_attempt_at > harness.clock.wall()
    assert harness.metrics.retries_total == 3
    assert harness.metrics.publish_errors_total == 1
    # Not due yet: nothing is tried again before the backoff passed.
    harness.publisher.unavailable = False
    assert await harness.relay.step() == (0, 0.0)
    harness.clock.advance(pause)
    assert (await harness.relay.step())[0] == 3
    assert {harness.store.status_of(e) for e in events} == {"sent"}


async def test_a_permanent_rejection_fails_that_event_only(harness: Harness) -> None:
    harness.store.add("too-big")
    harness.store.add("fine")
    harness.publisher.reject = {"too-big"}

    await harness.relay.step()

    rejected = harness.store.messages["too-big"]
    assert (rejected.status, rejected.error) == ("failed", "MessageSizeTooLargeError")
    assert harness.store.status_of("fine") == "sent"
    assert harness.metrics.failures_total == 1


async def test_what_kafka_took_is_announced_sent_before_it_is_marked_and_a_rejection_failed(
    harness: Harness,
) -> None:
    """Sent is Kafka's acknowledgement: announced at once, then marked (a mark that grows
    with the collection on FerretDB holds nobody up); a permanent rejection, or an event no
    envelope can be made of, is announced failed once marked. Nothing of a retried batch is
    announced. `settled` follows the mark of the sent."""
    announced: list[tuple[str, EventStatus, str, str]] = []
    settled: list[str] = []
    harness.relay = Relay(
        store=harness.store,
        leases=harness.leases,
        publisher=harness.publisher,
        metrics=harness.metrics,
        config=RelayConfig(shards=SHARDS, batch_size=50),
        clock=harness.clock,
        supervisor=harness.supervisor,
        announce=lambda e: announced.append(
            (e.event_id, e.status, e.error, harness.store.status_of(e.event_id))
        ),
        settled=lambda: settled.append(harness.store.status_of("fine")),
    )
    harness.store.add("fine")
    harness.store.add("too-big")
    harness.store.add("broken", size_bytes="many")  # no envelope can be made of it
    harness.publisher.reject = {"too-big"}
    await harness.relay.step()
    broken = harness.store.messages["broken"].error
    assert "cannot serialise" in broken
    assert sorted(announced) == [
        ("broken", EventStatus.FAILED, broken, "failed"),
        ("fine", EventStatus.SENT, "", "new"),  # before its mark
        ("too-big", EventStatus.FAILED, "MessageSizeTooLargeError", "failed"),
    ]
    assert settled == ["sent"]  # told once the sent are marked
    harness.store.add("later")
    harness.publisher.unavailable = True
    await harness.relay.step()
    assert len(announced) == 3
    assert settled == ["sent"]


async def test_an_event_that_cannot_be_serialised_fails_without_a_publish(
    harness: Harness,
) -> None:
    harness.store.add("broken", size_bytes="many")

    await harness.relay.step()

    assert harness.publisher.published == []
    message = harness.store.messages["broken"]
    assert message.status == "failed"
    assert "cannot serialise" in message.error


async def test_the_loop_survives_failing_rounds_and_stops_on_request(harness: Harness) -> None:
    harness.store.add("after-errors")
    # One round meets an unreachable database, the next an unexpected bug.
    harness.store.errors = [DatabaseUnavailable(), RuntimeError("a bug in the store")]
    stop = asyncio.Event()
    run = asyncio.create_task(harness.relay.run(stop))
    await asyncio.wait_for(harness.store.sent.wait(), 5)
    assert harness.store.status_of("after-errors") == "sent"

    assert harness.supervisor.failures["relay-loop"] == 2
    assert not run.done()
    stop.set()
    await asyncio.wait_for(run, 5)
    assert harness.publisher.closed
    assert harness.lease_store.heartbeats == {}  # left on a graceful stop
    assert 'checkout_relay_loop_failures_total{loop="relay-loop"} 2' in harness.metrics.render()


def _pushed(harness: Harness) -> Relay:
    """The harness's stores under a relay that waits for wake-ups, with a safety-net poll
    of SAFETY_NET_S (so only a wake-up can explain a pick-up within a test)."""
    relay = harness.relay_with(
        RelayConfig(shards=SHARDS, batch_size=50, poll_interval_s=SAFETY_NET_S)
    )
    relay.push = True
    return relay


async def test_a_wake_up_ends_an_idle_wait_at_once(quiet_harness: Harness) -> None:
    harness = quiet_harness
    relay = _pushed(harness)
    stop = asyncio.Event()
    run = asyncio.create_task(relay.run(stop))
    try:
        # Idle: the loop looked once, found nothing, and waits: SAFETY_NET_S, or until a
        # wake-up. A pick-up within this test is the wake-up's.
        await wait_until(lambda: harness.store.calls >= 1, timeout_s=5, what="the first look")
        harness.store.add("woken")
        relay.wake()
        await wait_until(harness.store.sent.is_set, timeout_s=5, what="the woken pick-up")
        assert harness.store.status_of("woken") == "sent"
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)


async def test_a_wake_up_during_a_round_is_not_lost(quiet_harness: Harness) -> None:
    harness = quiet_harness
    relay = _pushed(harness)
    # The wake-up for "second" comes while the round's due query runs and finds nothing:
    # that round ends idle, and its wait must end at once instead of lasting SAFETY_NET_S.
    original = harness.store.due

    async def due_and_meanwhile_write(
        slot_ranges: Sequence[tuple[int, int]], now: datetime, limit: int
    ) -> list[PendingEvent]:
        found = await original(slot_ranges, now, limit)
        if "second" not in harness.store.messages:
            assert found == []
            harness.store.add("second")
            relay.wake()
        return found

    harness.store.due = due_and_meanwhile_write  # type: ignore[method-assign]
    stop = asyncio.Event()
    run = asyncio.create_task(relay.run(stop))
    try:
        await wait_until(
            lambda: (
                "second" in harness.store.messages and harness.store.status_of("second") == "sent"
            ),
            timeout_s=5,
            what="the pick-up after the wake-up during the round",
        )
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)


async def test_a_flood_of_wake_ups_costs_at_most_one_look_per_gap(
    quiet_harness: Harness,
) -> None:
    harness = quiet_harness
    gap_s = 0.2
    relay = harness.relay_with(
        RelayConfig(
            shards=SHARDS, batch_size=50, poll_interval_s=SAFETY_NET_S, wake_min_gap_s=gap_s
        )
    )
    relay.push = True
    stop = asyncio.Event()
    run = asyncio.create_task(relay.run(stop))
    try:
        await wait_until(lambda: harness.store.calls >= 1, timeout_s=5, what="the first look")
        before = harness.store.calls
        began = time.monotonic()
        for _ in range(100):  # a wake-up every 10 ms: a burst of uploads, or a flood
            relay.wake()
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - began
        harness.store.add("after the flood")
        relay.wake()
        await wait_until(harness.store.sent.is_set, timeout_s=5, what="the pick-up")
        looks = harness.store.calls - before
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)
    # No more looks than the gap allows (plus the last), and it did look during the flood.
    assert 3 <= looks <= elapsed / gap_s + 3, looks


async def test_a_wake_up_never_shortens_a_failure_pause(harness: Harness) -> None:
    relay = _pushed(harness)
    harness.store.add("down")
    harness.publisher.unavailable = True
    handled, pause = await relay.step()
    assert handled == 1
    assert pause > 0
    assert not relay._idle_wait  # what the loop's wait obeys: no wake-up ends this pause


async def test_a_published_batch_whose_mark_fails_is_marked_again_not_published_again(
    harness: Harness,
) -> None:
    events = list(ids("marks", 5))
    for event_id in events:
        harness.store.add(event_id)
    relay = harness.relay_with(RelayConfig(shards=SHARDS, batch_size=50, backoff_initial_s=0.01))
    # The due query answers; the first two marks fail, as after a Kafka outage when the
    # backlog's marks outlast the socket timeout.
    original = harness.store.mark_sent
    failures = [DatabaseUnavailable(), DatabaseUnavailable()]

    async def flaky(event_ids: Sequence[str], now: datetime) -> None:
        if failures:
            raise failures.pop(0)
        await original(event_ids, now)

    harness.store.mark_sent = flaky  # type: ignore[method-assign]

    handled, _ = await relay.step()

    assert handled == 5
    assert sorted(harness.publisher.published_ids()) == events  # published once, not three times
    assert {harness.store.status_of(e) for e in events} == {"sent"}


async def test_a_mark_that_keeps_failing_gives_the_round_up(harness: Harness) -> None:
    harness.store.add("only")
    relay = harness.relay_with(RelayConfig(shards=SHARDS, batch_size=50, backoff_initial_s=0.01))

    async def down(event_ids: Sequence[str], now: datetime) -> None:
        raise DatabaseUnavailable()

    harness.store.mark_sent = down  # type: ignore[method-assign]
    with pytest.raises(DatabaseUnavailable):
        await relay.step()
    assert harness.store.status_of("only") == "new"  # published, left for the next round
