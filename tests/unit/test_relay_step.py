"""The relay's step and loop with in-memory fakes: leases held and lost, publish failures,
permanent failures, and a loop that survives a failing round."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import datetime

import pytest

from checkout_client.backoff import Backoff
from checkout_server.errors import DatabaseUnavailable
from checkout_server.relay.leases import LeaseManager
from checkout_server.relay.metrics import RelayMetrics
from checkout_server.relay.ports import Delivery, Lease, Message
from checkout_server.relay.relay import Relay, RelayConfig
from checkout_server.supervisor import Supervisor
from tests.fakes import T0, FakeClock, FakeLeaseStore, FakePublisher, FakeRelayStore, ids

pytestmark = pytest.mark.timeout(10)

SHARDS = 4


class Harness:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = FakeRelayStore()
        self.lease_store = FakeLeaseStore()
        self.publisher = FakePublisher()
        self.metrics = RelayMetrics()
        self.supervisor = Supervisor(backoff=Backoff(0.01, 0.02))
        self.metrics.loop_failures = self.supervisor.failures
        self.leases = LeaseManager(
            self.lease_store, member="me", shards=SHARDS, ttl_s=6, skew_s=1, clock=self.clock
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


@pytest.fixture
async def harness() -> Harness:
    h = Harness()
    await h.leases.rebalance()  # alone: it takes every shard
    assert h.leases.valid_shards() == frozenset(range(SHARDS))
    return h


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
    """The harness's stores under a relay that waits for wake-ups, with a safety-net poll far
    longer than the tests' bounds (so only a wake-up can explain a quick pick-up)."""
    relay = harness.relay_with(RelayConfig(shards=SHARDS, batch_size=50, poll_interval_s=60))
    relay.push = True
    return relay


async def test_a_wake_up_ends_an_idle_wait_at_once(harness: Harness) -> None:
    relay = _pushed(harness)
    stop = asyncio.Event()
    run = asyncio.create_task(relay.run(stop))
    try:
        # Idle: the loop polled once, found nothing, and waits (the next rebalance is 2 s of
        # the fake clock away, which never moves: it waits for the safety net or a wake-up).
        await asyncio.wait_for(_until(lambda: harness.store.calls >= 1), 5)
        harness.store.add("woken")
        started = asyncio.get_running_loop().time()
        relay.wake()
        await asyncio.wait_for(harness.store.sent.wait(), 1.0)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert harness.store.status_of("woken") == "sent"
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)


async def test_a_wake_up_during_a_round_is_not_lost(harness: Harness) -> None:
    relay = _pushed(harness)
    harness.store.add("first")
    # The wake-up for "second" comes while the round that publishes "first" is running:
    # after that round the loop must look again instead of waiting for the safety net.
    original = harness.publisher.publish

    async def publish_and_meanwhile_write(messages: Sequence[Message]) -> list[Delivery]:
        if "second" not in harness.store.messages:
            harness.store.add("second")
            relay.wake()
        return await original(messages)

    harness.publisher.publish = publish_and_meanwhile_write  # type: ignore[method-assign]
    stop = asyncio.Event()
    run = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.wait_for(_until(lambda: harness.store.status_of("second") == "sent"), 1.0)
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)


async def test_a_wake_up_never_shortens_a_failure_pause(harness: Harness) -> None:
    relay = _pushed(harness)
    harness.store.add("down")
    harness.publisher.unavailable = True
    handled, pause = await relay.step()
    assert handled == 1
    assert pause > 0
    assert not relay._idle_wait  # what the loop's wait obeys: no wake-up ends this pause


async def _until(check: Callable[[], bool]) -> None:
    """Readiness wait on the fakes' state (the caller bounds it with wait_for)."""
    for _ in range(100_000):
        if check():
            return
        await asyncio.sleep(0.005)


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
