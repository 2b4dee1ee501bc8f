"""The watch hub with in-memory fakes: fan-out, a slow watcher, and a feed that survives a
failing query."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from checkout_client.backoff import Backoff
from checkout_server import errors
from checkout_server.domain import EventStatus, OutboxEvent, StoredObject
from checkout_server.status.watch import WatchHub
from checkout_server.supervisor import Supervisor
from tests.fakes import FakeOutbox, FakeStatusRecords, FakeStorage, status_service
from tests.helpers import outbox_event

pytestmark = pytest.mark.timeout(10)


SECOND = timedelta(seconds=1)


def event(event_id: str, status: EventStatus = EventStatus.NEW) -> OutboxEvent:
    return outbox_event(event_id, status=status)


class FlakyRecords(FakeStatusRecords):
    """Its change feed query raises `errors` first, one per call."""

    def __init__(self, events: dict[str, OutboxEvent], errors: list[BaseException]) -> None:
        super().__init__(events)
        self.errors = errors
        self.feed_queries = 0

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        self.feed_queries += 1
        if self.errors:
            raise self.errors.pop(0)
        return await super().changed_since(since, limit=limit)


def build_hub(
    outbox: FakeOutbox,
    supervisor: Supervisor,
    max_pending: int = 100,
    storage: FakeStorage | None = None,
    records: FakeStatusRecords | None = None,
    max_watchers: int = 4096,
    max_watchers_per_client: int = 256,
    result_check_interval_s: float = 0.01,
    reconcile_interval_s: float = 60,
    reconcile_checks_per_s: int = 50,
) -> WatchHub:
    storage = storage or FakeStorage()
    records = records or outbox.status_records()
    status = status_service(storage, outbox, records=records)
    return WatchHub(
        records=records,
        status=status,
        supervisor=supervisor,
        poll_interval_s=0.01,
        poll_min_gap_s=0.01,
        result_check_interval_s=result_check_interval_s,
        reconcile_interval_s=reconcile_interval_s,
        max_pending=max_pending,
        max_watchers=max_watchers,
        max_watchers_per_client=max_watchers_per_client,
        reconcile_checks_per_s=reconcile_checks_per_s,
    )


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(backoff=Backoff(0.01, 0.02))
    yield supervisor
    await supervisor.stop()


async def test_a_slow_watcher_overflows_alone(supervisor: Supervisor) -> None:
    hub = build_hub(FakeOutbox(), supervisor, max_pending=3)
    with hub.subscribe(None) as slow, hub.subscribe(None) as fast:
        for i in range(5):
            hub.publish(event(f"e{i}"))
            # The fast watcher reads each change at once; the slow one reads nothing.
            assert [e.event_id for e in await fast.next(1.0)] == [f"e{i}"]
        assert slow.overflowed
        assert not fast.overflowed
        # What the slow one keeps is bounded and the newest: it is told to re-subscribe.
        assert [e.event_id for e in await slow.next(0)] == ["e2", "e3", "e4"]


async def test_a_watcher_keeps_only_the_latest_change_per_event(supervisor: Supervisor) -> None:
    hub = build_hub(FakeOutbox(), supervisor)
    first = event("one")
    with hub.subscribe("one") as watcher:
        hub.publish(first)
        sent = replace(first, status=EventStatus.SENT, updated_at=first.updated_at + SECOND)
        hub.publish(sent)
        hub.publish(event("other"))  # not this watcher's event
        changes = await watcher.next(1.0)
    assert [(e.event_id, e.status) for e in changes] == [("one", EventStatus.SENT)]


async def test_a_change_is_offered_once_whichever_way_it_comes(supervisor: Supervisor) -> None:
    """This process's own write publishes a change at once; the poller's look-back then
    brings the same change from the records: the watcher gets it once."""
    outbox = FakeOutbox()
    hub = build_hub(outbox, supervisor)
    with hub.subscribe(None) as watcher:
        await hub.poll_once()  # the feed's cursor: now
        changed = event("mine")
        outbox.events[changed.event_id] = changed
        hub.publish(changed)  # as the outbox's on_recorded does
        assert [e.event_id for e in await watcher.next(1.0)] == ["mine"]
        await hub.poll_once()  # finds it in the records too
        assert await watcher.next(0) == []
        later = replace(changed, status=EventStatus.SENT, updated_at=changed.updated_at + SECOND)
        outbox.events[changed.event_id] = later
        await hub.poll_once()  # a change of its own: offered
        assert [(e.event_id, e.status) for e in await watcher.next(1.0)] == [
            ("mine", EventStatus.SENT)
        ]


async def test_a_status_behind_one_offered_is_never_offered(supervisor: Supervisor) -> None:
    """The topic and the poller may bring an event's statuses out of order (the relay's
    `sent` after a server marked it ready): a watcher never sees the event go back."""
    hub = build_hub(FakeOutbox(), supervisor)
    new = event("late")
    ready = replace(new, ready_at=new.created_at + SECOND, updated_at=new.created_at + SECOND)
    sent = replace(new, status=EventStatus.SENT, updated_at=new.created_at + 2 * SECOND)
    with hub.subscribe(None) as watcher:
        hub.publish(ready)
        hub.publish(sent)
        hub.publish(new)
        assert [e.api_status for e in await watcher.next(1.0)] == [EventStatus.READY]


async def test_a_status_seen_while_nobody_watched_is_not_offered_again(
    supervisor: Supervisor,
) -> None:
    """A watcher reads the current status when it subscribes: a status the hub knew before
    is not offered again, a later one is."""
    hub = build_hub(FakeOutbox(), supervisor)
    new = event("earlier")
    hub.publish(new)
    with hub.subscribe(None) as watcher:
        hub.publish(new)
        assert await watcher.next(0) == []
        hub.publish(replace(new, status=EventStatus.SENT, updated_at=new.updated_at + SECOND))
        assert [e.status for e in await watcher.next(1.0)] == [EventStatus.SENT]


async def test_the_feed_survives_a_query_that_raises_anything(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = FakeOutbox()
    records = FlakyRecords(outbox.events, [RuntimeError("driver bug"), KeyError("status")])
    hub = build_hub(outbox, supervisor, records=records)
    hub.start()
    try:
        with hub.subscribe(None) as watcher, caplog.at_level(logging.ERROR):
            changed = event("after-errors")
            outbox.events[changed.event_id] = changed
            delivered: list[str] = []
            async with asyncio.timeout(5):
                while "after-errors" not in delivered:
                    delivered += [e.event_id for e in await watcher.next(1.0)]
    finally:
        await hub.stop()
    assert supervisor.failures["watch-poller"] == 2
    assert records.feed_queries >= 3
    tracebacks = [r for r in caplog.records if r.exc_info and "watch-poller" in r.getMessage()]
    assert len(tracebacks) == 2  # logged with its traceback, not swallowed


class CountingStorage(FakeStorage):
    """Notes the key of each storage check, and when it began."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: list[str] = []
        self.checked_at: list[float] = []

    async def stat(self, bucket: str, key: str) -> StoredObject | None:
        self.stats.append(key)
        self.checked_at.append(time.monotonic())
        return await super().stat(bucket, key)


async def test_the_reconcile_checks_a_waiting_event_again_only_after_its_interval(
    supervisor: Supervisor,
) -> None:
    outbox = FakeOutbox()
    await outbox.add(event("waiting"))
    storage = CountingStorage()
    hub = build_hub(outbox, supervisor, storage=storage)

    await hub.reconcile_once()
    await hub.reconcile_once()  # at once again: not due (the interval is 60 s here)

    assert storage.stats == ["output/waiting.json"]
    await outbox.add(event("newer"))
    await hub.reconcile_once()  # a new waiting event is checked at its first sight
    assert storage.stats == ["output/waiting.json", "output/newer.json"]


@pytest.mark.timeout(20)
async def test_a_reconcile_round_spreads_its_checks_over_seconds(supervisor: Supervisor) -> None:
    outbox, storage = FakeOutbox(), CountingStorage()
    for i in range(5):
        await outbox.add(event(f"waiting{i}"))
    hub = build_hub(outbox, supervisor, storage=storage, reconcile_checks_per_s=2)

    await hub.reconcile_once()

    times = sorted(storage.checked_at)
    assert len(times) == 5
    # At most 2 in any second: the 1st and the 3rd (and the 3rd and the 5th) a second apart.
    assert times[2] - times[0] >= 0.99
    assert times[4] - times[2] >= 0.99


async def test_the_reconcile_says_whether_it_met_an_upload_or_a_result(
    supervisor: Supervisor,
) -> None:
    outbox, storage = FakeOutbox(), FakeStorage()
    await outbox.add(event("waiting"))
    hub = build_hub(outbox, supervisor, storage=storage, reconcile_interval_s=0.01)

    assert await hub.reconcile_once()  # its first round: everything is news
    assert not await hub.reconcile_once()  # the same event, still waiting
    await outbox.add(event("newer"))
    assert await hub.reconcile_once()  # made since the last round
    storage.objects["videos", "output/waiting.json"] = b"{}"
    storage.modified["videos", "output/waiting.json"] = datetime.now(UTC)
    while not await hub.reconcile_once():  # until "waiting" is due again: found
        pass
    assert not await hub.reconcile_once()


async def test_an_idle_reconcile_pauses_longer_until_an_upload_is_heard_of(
    supervisor: Supervisor,
) -> None:
    outbox = FakeOutbox()
    await outbox.add(event("waiting"))
    hub = build_hub(outbox, supervisor, reconcile_interval_s=5)
    await hub.reconcile_once()

    idle = asyncio.create_task(hub._reconcile_round())  # finds nothing new
    with pytest.raises(TimeoutError):  # and waits, for its pause or for an upload
        await asyncio.wait_for(asyncio.shield(idle), 0.2)
    assert hub.reconcile_pause_s == 10
    hub.publish(event("uploaded"))  # as the outbox or the status topic tells the hub
    assert await asyncio.wait_for(idle, 1.0) <= 5  # then the usual interval after the round


async def test_a_client_past_its_share_of_watchers_is_refused_and_others_are_not(
    supervisor: Supervisor,
) -> None:
    hub = build_hub(FakeOutbox(), supervisor, max_watchers=5, max_watchers_per_client=2)
    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(hub.subscribe(None, client="greedy"))
        with pytest.raises(errors.TooManyClientWatchers) as refused:
            held.enter_context(hub.subscribe("e1", client="greedy"))
        assert refused.value.metadata == {"limit": "2"}
        assert hub.watchers == 2  # the refused one never subscribed
        with hub.subscribe(None, client="honest") as honest:
            hub.publish(event("e1"))
            assert [e.event_id for e in await honest.next(1.0)] == ["e1"]
    # Closed streams give their places back.
    with hub.subscribe(None, client="greedy"), hub.subscribe(None, client="greedy"):
        assert hub.watchers == 2
    assert hub.refusals == {"TOO_MANY_CLIENT_WATCHERS": 1}


async def test_past_the_servers_watchers_every_client_is_refused(supervisor: Supervisor) -> None:
    hub = build_hub(FakeOutbox(), supervisor, max_watchers=3, max_watchers_per_client=2)
    with contextlib.ExitStack() as held:
        for client in ("a", "a", "b"):
            held.enter_context(hub.subscribe(None, client=client))
        with pytest.raises(errors.TooManyWatchers):
            held.enter_context(hub.subscribe(None, client="c"))
        assert hub.watchers == 3
    with hub.subscribe(None, client="c"):
        assert hub.watchers == 1
    assert hub.refusals == {"TOO_MANY_WATCHERS": 1}


async def test_an_owners_watcher_is_not_woken_by_other_owners_changes(
    supervisor: Supervisor,
) -> None:
    hub = build_hub(FakeOutbox(), supervisor)
    with hub.subscribe(None, owner="cam-a") as own, hub.subscribe(None) as everything:
        hub.publish(replace(event("theirs"), owner="cam-b"))
        assert [e.event_id for e in await everything.next(1.0)] == ["theirs"]
        assert await own.next(0.05) == []  # not woken: it waited the whole timeout
        hub.publish(replace(event("mine"), owner="cam-a"))
        assert [e.event_id for e in await own.next(1.0)] == ["mine"]


async def test_an_event_made_again_under_its_id_is_offered_again(supervisor: Supervisor) -> None:
    """After a Cleanup raced a resumable upload's finish, an event id comes back with a later
    `created_at`: its statuses are news, however far the first one got; the first one's are
    not, once the second is known."""
    hub = build_hub(FakeOutbox(), supervisor)
    first = event("again")
    failed = replace(first, ready_at=first.created_at, updated_at=first.created_at, error="X")
    second = replace(
        first, created_at=first.created_at + SECOND, updated_at=first.created_at + SECOND
    )
    with hub.subscribe(None) as watcher:
        hub.publish(failed)
        hub.publish(second)
        hub.publish(failed)  # the old one, brought late
        changes = await watcher.next(1.0)
    assert [(e.created_at, e.api_status) for e in changes] == [(second.created_at, EventStatus.NEW)]


async def test_a_change_read_back_at_millisecond_precision_is_the_same_event(
    supervisor: Supervisor,
) -> None:
    """This process's own `new` has microseconds; the same event's `sent`, read from the
    database or the status topic, milliseconds: it is the next status, not an older event."""
    hub = build_hub(FakeOutbox(), supervisor)
    own = event("precise")
    own = replace(own, created_at=own.created_at.replace(microsecond=123456))
    stored = own.created_at.replace(microsecond=123000)
    sent = replace(own, status=EventStatus.SENT, created_at=stored, updated_at=stored + SECOND)
    with hub.subscribe(None) as watcher:
        hub.publish(own)
        hub.publish(sent)
        assert [e.status for e in await watcher.next(1.0)] == [EventStatus.SENT]


async def test_a_new_watcher_starts_from_what_the_hub_heard_when_the_record_lags(
    supervisor: Supervisor,
) -> None:
    """The relay announces `sent` before its mark lands: a watcher that reads the record
    meanwhile starts from `sent`, which it would otherwise never be offered again; a record
    ahead of what the hub heard wins."""
    hub = build_hub(FakeOutbox(), supervisor)
    new = event("lagging")
    sent = replace(new, status=EventStatus.SENT, updated_at=new.updated_at + SECOND)
    hub.changed(sent)
    assert hub.latest(new) == sent
    ready = replace(
        new, ready_at=new.created_at + 2 * SECOND, updated_at=new.created_at + 2 * SECOND
    )
    assert hub.latest(ready) == ready
    assert hub.latest(event("unheard")).event_id == "unheard"


async def test_the_checks_of_watched_events_are_bounded_however_many_are_watched(
    supervisor: Supervisor,
) -> None:
    """A thousand watched events waiting: each round checks at most its share of 50 a
    second (25 every 0.5 s), those checked longest ago first, so every one comes round."""
    storage = CountingStorage()
    hub = build_hub(FakeOutbox(), supervisor, storage=storage, result_check_interval_s=0.5)
    for i in range(1000):
        hub.track(event(f"w{i:04}"))
    await hub.check_watched_once()
    assert len(storage.stats) == 25
    for _ in range(39):
        await hub.check_watched_once()
    assert len(storage.stats) == 1000
    assert len(set(storage.stats)) == 1000  # each once, none twice before all had a turn
