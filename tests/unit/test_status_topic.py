"""The status topic's records, the announcer that writes them, and the watch hub that reads
them, with in-memory fakes: what is pushed, what falls back to the database, and when."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest

from checkout_client.backoff import Backoff
from checkout_common import status_message
from checkout_server.adapters.kafka_status import (
    REFUSED_LOG_EVERY_S,
    KafkaStatusChannel,
    KafkaStatusFeed,
)
from checkout_server.domain import EventStatus, OutboxEvent
from checkout_server.outbox import announcement
from checkout_server.outbox.announcement import BATCH, Announcer, event_of, message_of
from checkout_server.status.watch import WatchHub
from checkout_server.supervisor import Supervisor
from tests.fakes import FakeOutbox, FakePublisher, FakeStorage
from tests.helpers import outbox_event, wait_until
from tests.unit.test_watch import FlakyRecords, build_hub

pytestmark = pytest.mark.timeout(10)


class FakeChannel:
    """The status topic: takes records while `up`, counts what it got."""

    def __init__(self, *, up: bool = True) -> None:
        self.up = up
        self.records: list[tuple[str, bytes]] = []

    async def send(self, records: Sequence[tuple[str, bytes]]) -> bool:
        if not self.up:
            return False
        self.records += records
        return True


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(backoff=Backoff(0.01, 0.02))
    yield supervisor
    await supervisor.stop()


# --- records ---------------------------------------------------------------------------------


def test_a_status_record_comes_back_as_the_event_a_watcher_is_shown() -> None:
    at = datetime(2026, 12, 7, 1, 2, 3, 456000, tzinfo=UTC)
    sent = outbox_event("e1", at=at, status=EventStatus.SENT, owner="camera", error="", ready_at=at)
    fields = status_message.decode(message_of(sent))
    assert fields is not None
    back = event_of(fields)
    assert back is not None
    shown = ("event_id", "video_id", "bucket", "status", "created_at", "updated_at", "ready_at")
    assert [getattr(back, f) for f in shown] == [getattr(sent, f) for f in shown]
    assert (back.owner, back.api_status) == ("camera", EventStatus.READY)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"[1]",
        b'{"version": 2, "type": "checkout.status.changed", "event_id": "e"}',
        b'{"version": 1, "type": "checkout.status.renamed", "event_id": "e"}',
        b'{"version": 1, "type": "checkout.status.changed"}',
        b'{"version": 1, "type": "checkout.result.written", "event_id": "e", "pad": "'
        + b"x" * status_message.MAX_BYTES
        + b'"}',
    ],
)
def test_a_record_of_another_kind_version_or_shape_is_skipped(value: bytes | None) -> None:
    assert status_message.decode(value) is None


def test_a_status_record_missing_a_field_is_no_event() -> None:
    fields = status_message.decode(message_of(outbox_event("e1")))
    assert fields is not None
    for missing in ("created_at", "updated_at", "status", "video_id", "bucket"):
        assert event_of({k: v for k, v in fields.items() if k != missing}) is None


# --- the announcer ---------------------------------------------------------------------------


async def test_announced_changes_reach_the_topic_latest_per_event() -> None:
    channel = FakeChannel()
    lost: list[None] = []
    announcer = Announcer(channel, on_lost=lambda: lost.append(None))
    first = outbox_event("e1")
    announcer.announce(first)
    announcer.announce(replace(first, status=EventStatus.SENT))  # replaces the unsent one
    announcer.announce(outbox_event("e2"))
    await announcer.round()
    sent = [status_message.decode(v) for _, v in channel.records]
    assert [(f["event_id"], f["status"]) for f in sent if f] == [("e1", "sent"), ("e2", "new")]
    assert [k for k, _ in channel.records] == ["e1", "e2"]
    assert (announcer.sent, announcer.lost, lost) == (2, 0, [])


async def test_changes_the_topic_does_not_take_wake_the_servers_instead() -> None:
    channel = FakeChannel(up=False)
    lost: list[None] = []
    announcer = Announcer(channel, on_lost=lambda: lost.append(None))
    announcer.announce(outbox_event("e1"))
    announcer.announce(outbox_event("e2"))
    await announcer.round()
    assert (announcer.lost, len(lost)) == (2, 1)  # one wake-up for the batch
    channel.up = True
    announcer.announce(outbox_event("e3"))
    await announcer.round()
    assert [k for k, _ in channel.records] == ["e3"]  # the lost ones are not sent again


async def test_a_writer_whose_lost_changes_are_marked_wakes_the_servers_again_at_once() -> None:
    lost: list[None] = []
    announcer = Announcer(None, on_lost=lambda: lost.append(None))
    announcer.settled()
    assert lost == []  # nothing lost: no wake-up
    announcer.announce(outbox_event("e1"))  # lost before its record is marked
    assert len(lost) == 1
    announcer.settled()  # marked now: a read the first wake-up started may have missed it
    assert len(lost) == 2
    announcer.settled()
    assert len(lost) == 2  # once per loss


class HangingChannel(FakeChannel):
    """A topic that never answers (Kafka stalled); `asked` is set once a send waits."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()

    async def send(self, records: Sequence[tuple[str, bytes]]) -> bool:
        self.asked.set()
        await asyncio.Event().wait()
        return True


async def test_a_stopping_writer_sends_what_is_queued() -> None:
    channel = FakeChannel()
    lost: list[None] = []
    announcer = Announcer(channel, on_lost=lambda: lost.append(None))
    announcer.announce(outbox_event("e1"))
    announcer.announce(outbox_event("e2"))

    await announcer.flush(timeout_s=1.0)  # no round ran: the writer stopped first

    assert [k for k, _ in channel.records] == ["e1", "e2"]
    assert (announcer.sent, lost) == (2, [])


async def test_what_a_stopping_writer_cannot_send_wakes_the_servers() -> None:
    lost: list[None] = []
    channel = HangingChannel()
    announcer = Announcer(channel, on_lost=lambda: lost.append(None))
    announcer.announce(outbox_event("e1"))
    sending = asyncio.create_task(announcer.round())
    await asyncio.wait_for(channel.asked.wait(), 1.0)  # e1 is taken, the topic is silent
    for n in range(BATCH + 1):
        announcer.announce(outbox_event(f"later-{n}"))

    sending.cancel()  # the writer stops mid-send
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert (announcer.lost, len(lost)) == (1, 1)  # e1: perhaps not taken
    # The topic does not answer in time: the batch being sent and the one left queued.
    await announcer.flush(timeout_s=0.05)

    assert (announcer.lost, len(lost)) == (1 + BATCH + 1, 3)


async def test_without_a_topic_every_change_wakes_the_servers() -> None:
    lost: list[None] = []
    announcer = Announcer(None, on_lost=lambda: lost.append(None))
    announcer.announce(outbox_event("e1"))
    assert (announcer.lost, len(lost)) == (1, 1)


async def test_announcements_past_the_buffer_drop_the_oldest_and_wake_the_servers() -> None:
    channel = FakeChannel()
    lost: list[None] = []
    announcer = Announcer(channel, on_lost=lambda: lost.append(None), max_pending=2)
    for name in ("e1", "e2", "e3"):
        announcer.announce(outbox_event(name))
    assert len(lost) == 1
    await announcer.round()
    assert [k for k, _ in channel.records] == ["e2", "e3"]


# --- the hub and the topic --------------------------------------------------------------------


@dataclass
class LiveHub:
    """A started hub reading the topic, over fake records that count the poller's queries."""

    outbox: FakeOutbox
    records: FlakyRecords
    hub: WatchHub


@pytest.fixture
async def live(supervisor: Supervisor) -> AsyncIterator[LiveHub]:
    outbox = FakeOutbox()
    records = FlakyRecords(outbox.events, [])
    hub = build_hub(outbox, supervisor, records=records)
    hub.topic_live(True)
    hub.start()
    yield LiveHub(outbox, records, hub)
    await hub.stop()


async def test_while_the_topic_is_live_the_poller_reads_only_when_woken(live: LiveHub) -> None:
    outbox, records, hub = live.outbox, live.records, live.hub
    with hub.subscribe(None) as watcher:
        pushed = outbox_event("pushed")
        hub.changed(pushed)
        assert [e.event_id for e in await watcher.next(1.0)] == ["pushed"]
        # Many poll intervals (10 ms here) pass: no query.
        assert await watcher.next(0.2) == []
        assert records.feed_queries == 0
        # An announcement was lost: its writer's wake-up makes the poller read.
        lost = outbox_event("lost")
        outbox.events[lost.event_id] = lost
        hub.wake()
        assert [e.event_id for e in await watcher.next(1.0)] == ["lost"]
        assert records.feed_queries == 1


async def test_the_poller_reads_while_the_topic_is_down_and_once_more_when_it_returns(
    live: LiveHub,
) -> None:
    outbox, records, hub = live.outbox, live.records, live.hub
    with hub.subscribe(None) as watcher:
        hub.topic_live(False)  # Kafka went away
        during = outbox_event("during")
        outbox.events[during.event_id] = during
        assert [e.event_id for e in await watcher.next(1.0)] == ["during"]
        polled = records.feed_queries
        assert await watcher.next(0.1) == []
        assert records.feed_queries > polled  # every poll interval while down
        missed = outbox_event("missed")  # written before the feed caught up
        outbox.events[missed.event_id] = missed
        hub.topic_live(True)
        assert [e.event_id for e in await watcher.next(1.0)] == ["missed"]
        settled = records.feed_queries
        assert await watcher.next(0.2) == []
        assert records.feed_queries == settled  # live again: no more polls


async def test_an_announced_result_is_checked_marked_and_pushed(supervisor: Supervisor) -> None:
    outbox, storage = FakeOutbox(), FakeStorage()
    hub = build_hub(outbox, supervisor, storage=storage)
    known, unknown = outbox_event("known"), outbox_event("unknown")
    for event in (known, unknown):
        await outbox.add(event)
        storage.objects[("videos", f"output/{event.event_id}.json")] = b"{}"
        storage.modified[("videos", f"output/{event.event_id}.json")] = datetime.now(UTC)
    hub.changed(known)  # the topic brought its record: no read needed
    with hub.subscribe(None) as watcher:
        assert await watcher.next(0) == []
        hub.result_written("known")
        hub.result_written("unknown")  # this server missed its record: read once
        hub.result_written("absent")  # no such event: nothing
        await hub.check_hints_once()
        ready = await watcher.next(1.0)
    assert sorted((e.event_id, e.api_status) for e in ready) == [
        ("known", EventStatus.READY),
        ("unknown", EventStatus.READY),
    ]
    assert all(outbox.events[e].ready_at is not None for e in ("known", "unknown"))


async def test_an_announced_result_not_in_storage_is_not_pushed(supervisor: Supervisor) -> None:
    outbox = FakeOutbox()
    hub = build_hub(outbox, supervisor)
    waiting = outbox_event("waiting")
    await outbox.add(waiting)
    with hub.subscribe(None) as watcher:
        hub.result_written("waiting")
        await hub.check_hints_once()
        assert await watcher.next(0.05) == []
    assert outbox.events["waiting"].ready_at is None


class CountingOutbox(FakeOutbox):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    async def get(self, event_id: str) -> OutboxEvent | None:
        self.gets.append(event_id)
        return await super().get(event_id)


async def test_a_flood_of_announced_results_is_bounded(supervisor: Supervisor) -> None:
    outbox = CountingOutbox()
    hub = build_hub(outbox, supervisor)
    for i in range(20_000):
        hub.result_written(f"e{i}")
    await asyncio.wait_for(hub.check_hints_once(), 5)
    assert len(outbox.gets) == 10_000  # the oldest are left to the reconcile
    assert outbox.gets[0] == "e10000"


# --- signatures --------------------------------------------------------------------------


def feed_with(
    secret: str,
    changes: list[OutboxEvent],
    results: list[str],
    clock: Callable[[], float] = time.monotonic,
) -> KafkaStatusFeed:
    return KafkaStatusFeed(
        consumer_factory=lambda: pytest.fail("not started"),
        topic="t",
        on_change=changes.append,
        on_result=results.append,
        on_live=lambda live: None,
        secret=secret,
        clock=clock,
    )


def test_with_a_secret_only_signed_status_changes_are_taken() -> None:
    """A writer without the servers' and relays' secret (the runner's Kafka user may write
    the topic) cannot show watchers a status; its announcements of results are hints, checked
    in storage, and need none."""
    changes: list[OutboxEvent] = []
    results: list[str] = []
    feed = feed_with("s" * 16, changes, results)
    value = message_of(outbox_event("e1"))
    feed.handle(value, {})
    feed.handle(value, {status_message.SIGNATURE: status_message.signature("x" * 16, value)})
    assert (changes, feed.refused) == ([], 2)
    feed.handle(value, {status_message.SIGNATURE: status_message.signature("s" * 16, value)})
    assert [e.event_id for e in changes] == ["e1"]
    hint = status_message.result_written(
        event_id="e1",
        video_id="e1",
        bucket="videos",
        result_key="output/e1.json",
        written_at=datetime.now(UTC),
    )
    feed.handle(hint, {})
    assert results == ["e1"]


async def test_the_channel_signs_what_it_writes_with_its_secret() -> None:
    publisher = FakePublisher()
    channel = KafkaStatusChannel(publisher, secret="s" * 16)  # type: ignore[arg-type]
    value = message_of(outbox_event("e1"))
    assert await channel.send([("e1", value)])
    headers = dict(publisher.published[0].headers)
    assert status_message.signed("s" * 16, value, headers[status_message.SIGNATURE])


async def test_lost_changes_wake_the_servers_now_and_once_more_a_moment_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay announces `sent` before it marks the records: a read woken at once may
    come before the mark, so the servers are woken again REWAKE_S later (once, however
    many changes were lost meanwhile)."""
    monkeypatch.setattr(announcement, "REWAKE_S", 0.05)
    lost: list[None] = []
    announcer = Announcer(None, on_lost=lambda: lost.append(None))
    announcer.announce(outbox_event("e1"))
    announcer.announce(outbox_event("e2"))
    assert len(lost) == 2
    await wait_until(lambda: len(lost) == 3, timeout_s=2)
    await asyncio.sleep(0.2)  # no further wake-up comes: this is the thing asserted
    assert len(lost) == 3


def test_a_flood_of_unsigned_changes_is_warned_of_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    feed = feed_with("s" * 16, [], [], clock=lambda: now[0])
    value = message_of(outbox_event("e1"))
    with caplog.at_level(logging.WARNING, logger="checkout_server.adapters.kafka_status"):
        for _ in range(1000):
            feed.handle(value, {})
        now[0] = REFUSED_LOG_EVERY_S
        feed.handle(value, {})
    warnings = [r for r in caplog.records if r.getMessage() == "unsigned status changes refused"]
    # The first at once, then one a minute later for the 1000 refused since.
    assert [getattr(r, "refused", None) for r in warnings] == [1, 1000]
    assert feed.refused == 1001
