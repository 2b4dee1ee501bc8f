"""The outbox ports' contracts, run alike against the in-memory fakes (tests/fakes.py) and the
real adapters on FerretDB, so the fakes the unit tests rely on cannot drift from the adapters.

Each case writes through the commit side (`Outbox`) and reads through both ports, as the
server does. Times are whole milliseconds: BSON dates keep no more.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.asynchronous.collection import AsyncCollection

from checkout_server.adapters.mongo_outbox import MongoOutbox
from checkout_server.adapters.mongo_status_records import MongoStatusRecords
from checkout_server.domain import EventStatus, OutboxEvent
from checkout_server.errors import DuplicateIdempotencyKey, InvalidPageToken
from checkout_server.outbox.document import Document
from checkout_server.ports import Outbox, PageEnd, StatusRecords
from tests.fakes import FakeOutbox
from tests.helpers import outbox_event

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("ferretdb"),  # started before the first test (conftest.py)
]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Ports:
    outbox: Outbox
    records: StatusRecords


@pytest.fixture(params=["fake", "ferretdb"])
def backend(request: pytest.FixtureRequest) -> Ports:
    """Both ports over one store: the fakes' shared events, or this test's collections."""
    if request.param == "fake":
        fake = FakeOutbox()
        return Ports(fake, fake.status_records())
    outbox: AsyncCollection[Document] = request.getfixturevalue("outbox_collection")
    statuses: AsyncCollection[Document] = request.getfixturevalue("status_collection")
    return Ports(MongoOutbox(outbox, statuses), MongoStatusRecords(statuses))


@pytest.fixture
async def ports(backend: Ports) -> Ports:
    await backend.outbox.ensure_indexes()
    await backend.records.ensure_indexes()
    return backend


def event_id(n: int) -> str:
    """Ids that sort as their numbers do."""
    return str(uuid.UUID(int=n))


def event(n: int, *, at_s: float = 0, **changes: object) -> OutboxEvent:
    """Event `n` (an upload of video `n`), created and updated `at_s` after T0."""
    at = T0 + timedelta(seconds=at_s)
    return outbox_event(event_id(n), at=at, **changes)


async def scan_events(
    records: StatusRecords,
    *,
    status: EventStatus | None = None,
    owner: str | None = None,
    after: str = "",
    limit: int = 100,
) -> list[OutboxEvent]:
    """What a scan yields, which must all be events (no PageEnd within the time budget)."""
    found = [e async for e in records.scan(status=status, owner=owner, after=after, limit=limit)]
    events = [e for e in found if isinstance(e, OutboxEvent)]
    assert events == found, "the scan ended early"
    return events


async def scanned(
    records: StatusRecords,
    *,
    status: EventStatus | None = None,
    owner: str | None = None,
    after: str = "",
    limit: int = 100,
) -> list[str]:
    found = await scan_events(records, status=status, owner=owner, after=after, limit=limit)
    return [e.event_id for e in found]


# --- Outbox: the commit side ----------------------------------------------------------------


async def test_an_added_event_is_read_back_as_it_was_written(ports: Ports) -> None:
    written = event(
        1,
        filename="a.mp4",
        sha256="ab" * 32,
        size_bytes=1234,
        idempotency_key="key-1",
        owner="camera",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    await ports.outbox.add(written)

    assert await ports.outbox.get(written.event_id) == written
    assert await ports.outbox.get(event_id(2)) is None


async def test_an_idempotency_key_is_its_owners(ports: Ports) -> None:
    mine = event(1, idempotency_key="k", owner="a")
    theirs = event(2, idempotency_key="k", owner="b")
    anonymous = event(3, idempotency_key="k")
    for e in (mine, theirs, anonymous):
        await ports.outbox.add(e)

    again = event(4, idempotency_key="k", owner="a")
    with pytest.raises(DuplicateIdempotencyKey) as refused:
        await ports.outbox.add(again)

    assert refused.value.existing == mine
    assert await ports.outbox.get(again.event_id) is None
    find = ports.outbox.find_by_idempotency_key
    assert await find("k", owner="a") == mine
    assert await find("k", owner="b") == theirs
    assert await find("k", owner="") == anonymous
    assert await find("k", owner="c") is None
    assert await find("other", owner="a") is None


async def test_events_without_a_key_never_collide_and_an_empty_key_finds_none(
    ports: Ports,
) -> None:
    await ports.outbox.add(event(1, owner="a"))
    await ports.outbox.add(event(2, owner="a"))

    assert await ports.outbox.find_by_idempotency_key("", owner="a") is None
    assert await ports.records.count(status=None, owner="a") == 2


async def test_videos_with_events_names_uploads_and_re_requests(ports: Ports) -> None:
    uploaded, re_requested, unknown = event_id(1), event_id(2), event_id(3)
    await ports.outbox.add(event(1))
    await ports.outbox.add(event(9, video_id=re_requested))  # a re-request of video 2

    found = await ports.outbox.videos_with_events([uploaded, re_requested, unknown])

    assert found == {uploaded, re_requested}
    assert await ports.outbox.videos_with_events([]) == set()


async def test_delete_all_deletes_every_event_and_counts_them(ports: Ports) -> None:
    for n in range(3):
        await ports.outbox.add(event(n))

    assert await ports.outbox.delete_all() == 3

    assert await ports.outbox.get(event_id(0)) is None
    assert await ports.records.count(status=None, owner=None) == 0
    assert await ports.outbox.delete_all() == 0


async def test_ping_answers(ports: Ports) -> None:
    await ports.outbox.ping()


# --- StatusRecords: the read model ---------------------------------------------------------


async def test_scan_is_newest_first_and_the_id_breaks_ties(ports: Ports) -> None:
    # Added out of order; 2 and 3 share a creation time.
    for n, at_s in ((2, 5), (0, 1), (3, 5), (1, 3), (4, 9)):
        await ports.outbox.add(event(n, at_s=at_s))

    assert await scanned(ports.records) == [event_id(n) for n in (4, 3, 2, 1, 0)]
    assert await scanned(ports.records, limit=2) == [event_id(4), event_id(3)]


async def paged(records: StatusRecords, *, page_size: int) -> list[str]:
    """Every event, page after page, each page after the cursor of the last one shown."""
    seen: list[str] = []
    after = ""
    while True:
        page = await scan_events(records, after=after, limit=page_size)
        seen += [e.event_id for e in page]
        if len(page) < page_size:
            return seen
        after = records.cursor_of(page[-1])


async def test_pages_follow_the_cursor_of_the_last_event_shown(ports: Ports) -> None:
    for n in range(7):
        await ports.outbox.add(event(n, at_s=n // 2))  # pairs share a creation time

    assert await paged(ports.records, page_size=3) == [event_id(n) for n in reversed(range(7))]


async def test_pages_cross_the_hours_the_events_were_made_in(ports: Ports) -> None:
    # Two events an hour over four hours, added out of order, one exactly on an hour.
    for n in (3, 0, 7, 5, 1, 6, 2, 4):
        await ports.outbox.add(event(n, at_s=n * 1800))

    assert await paged(ports.records, page_size=3) == [event_id(n) for n in reversed(range(8))]
    assert await scanned(ports.records, status=EventStatus.NEW, limit=5) == [
        event_id(n) for n in (7, 6, 5, 4, 3)
    ]


async def test_a_cursor_keeps_its_place_without_its_event(ports: Ports) -> None:
    for n in (1, 3):
        await ports.outbox.add(event(n, at_s=n))
    gone = event(2, at_s=2)  # never stored (or deleted since its page was shown)

    after = ports.records.cursor_of(gone)

    assert await scanned(ports.records, after=after) == [event_id(1)]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "é",
        _b64('{"a": 1}'),
        _b64("[1, 2, 3]"),
        _b64('[1.5, "x"]'),
        # Milliseconds no datetime holds: an OverflowError or OSError inside, not INTERNAL.
        _b64('[99999999999999999999, "x"]'),
        _b64('[-99999999999999999999, "x"]'),
        _b64('[253402300800000, "x"]'),  # the year 10000
        "A" * 100_000,
    ],
    ids=["text", "non-ascii", "object", "triple", "float", "huge", "negative", "y10k", "long"],
)
async def test_a_cursor_these_records_did_not_make_is_refused(ports: Ports, cursor: str) -> None:
    await ports.outbox.add(event(1))
    with pytest.raises(InvalidPageToken):
        await scanned(ports.records, after=cursor)


async def test_count_and_scan_filter_by_api_status_and_owner(ports: Ports) -> None:
    waiting = event(1, at_s=1, owner="a")
    sent = event(2, at_s=2, owner="b", status=EventStatus.SENT)
    failed = event(3, at_s=3, owner="a", status=EventStatus.FAILED, error="too large")
    ready = event(4, at_s=4, owner="a", status=EventStatus.SENT)
    failure_result = event(5, at_s=5, owner="b", status=EventStatus.SENT)
    for e in (waiting, sent, failed, ready, failure_result):
        await ports.outbox.add(e)
    assert await ports.records.mark_ready(ready.event_id, T0 + timedelta(seconds=10))
    assert await ports.records.mark_ready(
        failure_result.event_id, T0 + timedelta(seconds=10), error="VIDEO_UNDECODABLE: no moov"
    )

    expected = {
        None: [failure_result, ready, failed, sent, waiting],
        EventStatus.NEW: [waiting],
        EventStatus.SENT: [sent],
        EventStatus.READY: [ready],
        EventStatus.FAILED: [failure_result, failed],
    }
    for status, events in expected.items():
        assert await scanned(ports.records, status=status) == [e.event_id for e in events]
        assert await ports.records.count(status=status, owner=None) == len(events)
        own = [e.event_id for e in events if e.owner == "a"]
        assert await scanned(ports.records, status=status, owner="a") == own
        assert await ports.records.count(status=status, owner="a") == len(own)


async def test_owns_video_is_true_for_each_owner_of_an_event_of_the_video(ports: Ports) -> None:
    video = event_id(1)
    await ports.outbox.add(event(1, owner="a"))
    await ports.outbox.add(event(2, owner="b", video_id=video))  # b re-requested it

    assert await ports.records.owns_video(video, "a")
    assert await ports.records.owns_video(video, "b")
    assert not await ports.records.owns_video(video, "c")
    assert not await ports.records.owns_video(event_id(9), "a")


async def test_mark_ready_marks_once(ports: Ports) -> None:
    waiting = event(1)
    await ports.outbox.add(waiting)
    at = T0 + timedelta(minutes=1)

    assert await ports.records.mark_ready(waiting.event_id, at)
    assert not await ports.records.mark_ready(waiting.event_id, at + timedelta(minutes=1))
    assert not await ports.records.mark_ready(event_id(9), at)  # no such event

    marked = await ports.outbox.get(waiting.event_id)
    assert marked == replace(waiting, ready_at=at, updated_at=at)
    assert marked.api_status is EventStatus.READY


async def test_a_failure_result_keeps_its_error_and_a_plain_one_keeps_the_relays(
    ports: Ports,
) -> None:
    at = T0 + timedelta(minutes=1)
    await ports.outbox.add(event(1, status=EventStatus.SENT))
    await ports.outbox.add(event(2, status=EventStatus.FAILED, error="relay: too large"))

    assert await ports.records.mark_ready(event_id(1), at, error="FAILED: bad")
    assert await ports.records.mark_ready(event_id(2), at)

    first, second = [await ports.outbox.get(event_id(n)) for n in (1, 2)]
    assert first is not None
    assert second is not None
    assert (first.api_status, first.error) == (EventStatus.FAILED, "FAILED: bad")
    assert (second.api_status, second.error) == (EventStatus.FAILED, "relay: too large")


async def test_changed_since_is_oldest_change_first_from_since_on(ports: Ports) -> None:
    for n in range(4):
        await ports.outbox.add(event(n, at_s=n))
    later = T0 + timedelta(seconds=10)
    assert await ports.records.mark_ready(event_id(0), later)  # its change is now the newest

    changed = await ports.records.changed_since(T0 + timedelta(seconds=1), limit=10)
    assert [e.event_id for e in changed] == [event_id(n) for n in (1, 2, 3, 0)]
    assert changed[-1].updated_at == later

    first_two = await ports.records.changed_since(T0 + timedelta(seconds=1), limit=2)
    assert [e.event_id for e in first_two] == [event_id(1), event_id(2)]
    assert await ports.records.changed_since(later + timedelta(milliseconds=1), limit=10) == []


def recent_event(n: int, *, minutes_ago: float) -> OutboxEvent:
    """Event `n`, made that long ago (the reconcile reads recent hours at every call)."""
    return outbox_event(event_id(n), at=datetime.now(UTC) - timedelta(minutes=minutes_ago))


async def test_unready_is_newest_first_without_the_marked_ones(ports: Ports) -> None:
    for n, minutes_ago in ((0, 1), (1, 3), (2, 0), (3, 2)):
        await ports.outbox.add(recent_event(n, minutes_ago=minutes_ago))
    assert await ports.records.mark_ready(event_id(2), datetime.now(UTC))

    waiting = await ports.records.unready(limit=10)
    assert [e.event_id for e in waiting] == [event_id(n) for n in (0, 3, 1)]
    assert [e.event_id for e in await ports.records.unready(limit=2)] == [event_id(0), event_id(3)]


async def test_unready_crosses_the_hours_newest_first(ports: Ports) -> None:
    for n in (2, 0, 4, 1, 3):  # 40 minutes apart: over 4 hours of the last day
        await ports.outbox.add(recent_event(n, minutes_ago=(4 - n) * 40))
    assert await ports.records.mark_ready(event_id(3), datetime.now(UTC))

    waiting = await ports.records.unready(limit=3)

    assert [e.event_id for e in waiting] == [event_id(n) for n in (4, 2, 1)]


async def test_a_scan_closed_early_leaves_the_records_usable(ports: Ports) -> None:
    for n in range(5):
        await ports.outbox.add(event(n, at_s=n))
    events: AsyncGenerator[OutboxEvent | PageEnd, None] = ports.records.scan(
        status=None, owner=None, after="", limit=5
    )
    first = await anext(events)
    await events.aclose()

    assert isinstance(first, OutboxEvent)
    assert first.event_id == event_id(4)
    assert await ports.records.count(status=None, owner=None) == 5
