"""A property of the status plane (hypothesis), with in-memory fakes of the records, the
storage and the status topic: for any interleaving of uploads on two servers, the relay's
marks, results (announced by the runner or not) and outages of the topic, each server's
all-events watcher ends on the status the record has.

Both servers run their real watch hubs and announcers (their loops, at short intervals); the
topic delivers to both hubs while up and refuses while down, as Kafka would. After the steps
the topic comes back and everything settles; then the last status each watcher saw of each
event must be the record's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from checkout_client.backoff import Backoff
from checkout_common import status_message
from checkout_server.domain import EventStatus, OutboxEvent
from checkout_server.outbox.announcement import Announcer, event_of
from checkout_server.status.watch import WatchHub
from checkout_server.supervisor import Supervisor
from tests.fakes import FakeOutbox, FakeStorage, status_service
from tests.helpers import outbox_event, wait_until

pytestmark = pytest.mark.timeout(120)

SETTLE_S = 5.0


class Topic:
    """The status topic: while up, each record reaches every reading hub at once."""

    def __init__(self) -> None:
        self.up = True
        self.hubs: list[WatchHub] = []
        # Hubs not reading (a server starting, or cut off from Kafka while the writers are
        # not): what is written meanwhile never reaches them, the worst case of a reader
        # that resumes from the end.
        self.deaf: set[int] = set()

    async def send(self, records: Sequence[tuple[str, bytes]]) -> bool:
        if not self.up:
            return False
        for _, value in records:
            self.deliver(value)
        return True

    def deliver(self, value: bytes) -> None:
        fields = status_message.decode(value)
        assert fields is not None
        for index, hub in enumerate(self.hubs):
            if index in self.deaf:
                continue
            if fields["type"] == status_message.RESULT_WRITTEN:
                hub.result_written(fields["event_id"])
            else:
                event = event_of(fields)
                assert event is not None
                hub.changed(event)

    def set_up(self, up: bool) -> None:
        self.up = up
        for index, hub in enumerate(self.hubs):
            hub.topic_live(up and index not in self.deaf)

    def set_deaf(self, index: int, deaf: bool) -> None:
        if deaf:
            self.deaf.add(index)
        else:
            self.deaf.discard(index)
        self.hubs[index].topic_live(self.up and not deaf)


class Server:
    """One server: its hub (reading the topic), its announcer, and an all-events watcher."""

    def __init__(self, outbox: FakeOutbox, storage: FakeStorage, topic: Topic) -> None:
        self.supervisor = Supervisor(backoff=Backoff(0.01, 0.02))
        self.announcer = Announcer(topic, on_lost=self.wake_all)
        self.status = status_service(storage, outbox, on_changed=self.own_change)
        self.hub = WatchHub(
            records=outbox.status_records(),
            status=self.status,
            supervisor=self.supervisor,
            poll_interval_s=10.0,  # the safety net: never reached here
            poll_min_gap_s=0.01,
            result_check_interval_s=0.05,
            reconcile_interval_s=0.05,
            max_pending=1000,
        )
        self.peers: list[Server] = []
        self.last: dict[str, EventStatus] = {}

    def wake_all(self) -> None:
        for server in self.peers:
            server.hub.wake()

    def own_change(self, event: OutboxEvent) -> None:
        self.hub.publish(event)
        self.announcer.announce(event)

    async def watch(self, ready: asyncio.Event) -> None:
        with self.hub.subscribe(None) as watcher:
            ready.set()
            while True:
                for change in await watcher.next(1.0):
                    self.last[change.event_id] = change.api_status

    def start(self) -> None:
        self.hub.start()
        self.supervisor.spawn("announcer", self.announcer.round)

    async def stop(self) -> None:
        await self.hub.stop()
        await self.supervisor.stop()


steps = st.lists(
    st.one_of(
        st.tuples(st.just("upload"), st.integers(0, 1)),
        st.tuples(st.just("sent"), st.integers(0, 9)),
        st.tuples(st.just("result"), st.integers(0, 9), st.booleans()),
        st.tuples(st.just("outage"), st.booleans()),
        st.tuples(st.just("deaf"), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("pause"), st.sampled_from([0.0, 0.02, 0.1])),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=steps)
# A server that stops reading while the relay marks an event sent, and reads again: it must
# catch up from the database (the generated cases find it too, less reliably).
@example(
    case=[
        ("upload", 0),
        ("deaf", 1, True),
        ("pause", 0.1),
        ("sent", 0),
        ("pause", 0.1),
        ("deaf", 1, False),
    ]
)
async def test_each_watcher_ends_on_the_records_status(case: list[tuple[object, ...]]) -> None:
    outbox, storage, topic = FakeOutbox(), FakeStorage(), Topic()
    servers = [Server(outbox, storage, topic) for _ in range(2)]
    relay = Announcer(topic, on_lost=servers[0].wake_all)
    for server in servers:
        server.peers = servers
        topic.hubs.append(server.hub)
        topic.set_up(True)
        server.start()
    ready = [asyncio.Event() for _ in servers]
    watchers = [asyncio.create_task(s.watch(r)) for s, r in zip(servers, ready, strict=True)]
    relay_task = asyncio.create_task(_forever(relay))
    events: list[str] = []
    try:
        await asyncio.gather(*(r.wait() for r in ready))
        for step in case:
            await _apply(step, outbox, storage, topic, servers, relay, events)
        for index in list(topic.deaf):
            topic.set_deaf(index, False)
        topic.set_up(True)
        await wait_until(
            lambda: all(_settled(s, outbox, events) for s in servers),
            timeout_s=SETTLE_S,
            what="every watcher on its event's recorded status",
        )
    finally:
        for task in (*watchers, relay_task):
            task.cancel()
        await asyncio.gather(*watchers, relay_task, return_exceptions=True)
        for server in servers:
            await server.stop()


def _settled(server: Server, outbox: FakeOutbox, events: list[str]) -> bool:
    return all(server.last.get(e) == outbox.events[e].api_status for e in events)


async def _forever(announcer: Announcer) -> None:
    while True:
        await announcer.round()


async def _apply(
    step: tuple[object, ...],
    outbox: FakeOutbox,
    storage: FakeStorage,
    topic: Topic,
    servers: list[Server],
    relay: Announcer,
    events: list[str],
) -> None:
    kind = step[0]
    now = datetime.now(UTC)
    if kind == "upload":
        server = servers[int(str(step[1]))]
        event = outbox_event(str(uuid.uuid4()), at=now)
        await outbox.add(event)
        events.append(event.event_id)
        server.own_change(event)  # as the outbox's on_recorded does
    elif kind in ("sent", "result") and events:
        event_id = events[int(str(step[1])) % len(events)]
        event = outbox.events[event_id]
        if kind == "sent" and event.status is EventStatus.NEW:
            sent = replace(event, status=EventStatus.SENT, updated_at=now)
            outbox.events[event_id] = sent
            relay.announce(replace(sent, ready_at=None, error=""))  # as the relay knows it
        elif kind == "result":
            key = ("videos", f"output/{event.video_id}.json")
            storage.objects[key] = b"{}"
            storage.modified[key] = now
            if step[2] and topic.up:  # the runner's announcement (given up while down)
                topic.deliver(
                    status_message.result_written(
                        event_id=event_id,
                        video_id=event.video_id,
                        bucket="videos",
                        result_key=key[1],
                        written_at=now,
                    )
                )
    elif kind == "outage":
        topic.set_up(not step[1])
    elif kind == "deaf":
        topic.set_deaf(int(str(step[1])), bool(step[2]))
    elif kind == "pause":
        await asyncio.sleep(float(str(step[1])))
