"""StatusService rules against in-memory fakes: when a result counts, listing, cleanup."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from checkout_server import errors
from checkout_server.api.auth import parse_bearer
from checkout_server.domain import ANONYMOUS, EventStatus, OutboxEvent
from checkout_server.status.service import StatusService
from tests.fakes import NOW, FakeOutbox, FakeStorage, status_service
from tests.helpers import outbox_event

pytestmark = pytest.mark.timeout(10)

VIDEO = "0b6e3f5e-8d4f-4e1a-9a51-8c3c0d9f2b10"


def service(
    storage: FakeStorage, outbox: FakeOutbox, token: str = "", clock_at: timedelta = timedelta()
) -> StatusService:
    return status_service(storage, outbox, admin_token=token, clock=lambda: NOW + clock_at)


def event(event_id: str = VIDEO, created: timedelta = timedelta()) -> OutboxEvent:
    return outbox_event(event_id, video_id=VIDEO, status=EventStatus.SENT, at=NOW + created)


async def test_a_result_written_after_the_event_makes_it_ready() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    await outbox.add(event())
    storage.objects[("videos", f"output/{VIDEO}.json")] = b'{"a": 1}'
    storage.modified[("videos", f"output/{VIDEO}.json")] = NOW + timedelta(seconds=30)

    got = await service(storage, outbox).get(VIDEO, ANONYMOUS)

    assert got.api_status is EventStatus.READY
    assert outbox.events[VIDEO].ready_at is not None  # recorded for listings


async def test_a_lookup_without_a_check_answers_the_record() -> None:
    """`may_check` is asked only for a waiting event; when it says no, storage is not read."""
    storage, outbox = FakeStorage(), FakeOutbox()
    await outbox.add(event())
    storage.objects[("videos", f"output/{VIDEO}.json")] = b'{"a": 1}'
    storage.modified[("videos", f"output/{VIDEO}.json")] = NOW + timedelta(seconds=30)
    asked: list[bool] = []

    async def no() -> bool:
        asked.append(False)
        return False

    async def yes() -> bool:
        asked.append(True)
        return True

    status = service(storage, outbox)
    assert (await status.get(VIDEO, ANONYMOUS, may_check=no)).api_status is EventStatus.SENT
    assert outbox.events[VIDEO].ready_at is None
    assert (await status.get(VIDEO, ANONYMOUS, may_check=yes)).api_status is EventStatus.READY
    assert (await status.get(VIDEO, ANONYMOUS, may_check=no)).api_status is EventStatus.READY
    assert asked == [False, True]  # not asked once the record says ready


async def test_a_result_this_service_finds_is_told_before_it_is_recorded() -> None:
    """`on_changed` gets the event this service found ready while its record still waits
    (its watchers and the status topic learn at once, not after the mark, which on FerretDB
    grows with the collection); then the record is marked."""
    storage, outbox = FakeStorage(), FakeOutbox()
    await outbox.add(event())
    storage.objects[("videos", f"output/{VIDEO}.json")] = b'{"a": 1}'
    storage.modified[("videos", f"output/{VIDEO}.json")] = NOW + timedelta(seconds=30)
    told: list[tuple[OutboxEvent, datetime | None]] = []
    status = status_service(
        storage,
        outbox,
        clock=lambda: NOW + timedelta(minutes=1),
        on_changed=lambda e: told.append((e, outbox.events[VIDEO].ready_at)),
    )
    ready = await status.refresh(event())
    assert (ready.api_status, ready.updated_at) == (EventStatus.READY, NOW + timedelta(minutes=1))
    assert told == [(ready, None)]  # told while the record still waited
    assert outbox.events[VIDEO].ready_at == NOW + timedelta(minutes=1)


async def test_an_older_result_does_not_count_for_a_re_request() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    re_request = "9f1c7e2a-1111-4c4c-8d8d-222233334444"
    await outbox.add(event(re_request, created=timedelta(minutes=10)))
    storage.objects[("videos", f"output/{VIDEO}.json")] = b"{}"
    storage.modified[("videos", f"output/{VIDEO}.json")] = NOW  # from the first run

    got = await service(storage, outbox).get(re_request, ANONYMOUS)

    assert got.api_status is EventStatus.SENT


async def test_result_too_large_is_a_clear_error() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    await outbox.add(event())
    storage.objects[("videos", f"output/{VIDEO}.json")] = b"{" + b" " * 2000 + b"}"
    storage.modified[("videos", f"output/{VIDEO}.json")] = NOW
    with pytest.raises(errors.ResultTooLarge):
        await service(storage, outbox).result(VIDEO, ANONYMOUS)


async def test_result_in_the_events_own_bucket_or_another_one() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    await outbox.add(event())
    storage.objects[("videos", f"output/{VIDEO}.json")] = b'{"objects": []}'
    storage.modified[("videos", f"output/{VIDEO}.json")] = NOW
    status = service(storage, outbox)
    for bucket in ("", "videos"):
        got = await status.result(VIDEO, ANONYMOUS, bucket=bucket)
        assert got.prediction == {"objects": []}
    with pytest.raises(errors.EventNotInBucket):
        await status.result(VIDEO, ANONYMOUS, bucket="archive")


@pytest.mark.parametrize(
    ("token", "authorization", "error"),
    [
        ("", "Bearer x", errors.CleanupDisabled),
        ("t0ken", "", errors.Unauthenticated),
        ("t0ken", "Bearer wrong", errors.Unauthenticated),
        ("t0ken", "Basic t0ken", errors.Unauthenticated),
    ],
)
async def test_cleanup_is_guarded(
    token: str, authorization: str, error: type[errors.ServiceError]
) -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    await outbox.add(event())
    with pytest.raises(error):
        await service(storage, outbox, token=token).cleanup(parse_bearer(authorization), ANONYMOUS)
    assert len(outbox.events) == 1


async def test_a_cleanup_tells_the_records_they_were_emptied() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    records = outbox.status_records()
    await outbox.add(event())
    status = status_service(storage, outbox, records=records, admin_token="tok")

    report = await status.cleanup(parse_bearer("Bearer tok"), ANONYMOUS)

    assert (report.deleted_events, records.emptied_times) == (1, 1)


@pytest.mark.parametrize(
    ("page_size", "page_token", "limit"),
    [
        (2, "", 2),
        (1000, "", 1000),
        (1001, "", 1000),  # capped, not refused
        (2**31 - 1, "", 1000),
        (0, "", 10_000),  # the original `status/all`: everything, up to LIST_ALL_MAX
        (0, "00000000-0000-4000-8000-000000000002", 100),  # a next page of the default size
    ],
)
async def test_the_listing_limit_follows_the_paging_parameters(
    page_size: int, page_token: str, limit: int
) -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    for i in range(3):
        await outbox.add(event(f"00000000-0000-4000-8000-00000000000{i}", timedelta(seconds=i)))
    if page_token:  # the token of the page after this event
        page_token = outbox.status_records().cursor_of(outbox.events[page_token])
    listing = await service(storage, outbox).list(
        status="", page_size=page_size, page_token=page_token, viewer=ANONYMOUS
    )
    assert (listing.limit, listing.total) == (limit, 3)
    shown = [e.event_id[-1] async for e in listing.events if isinstance(e, OutboxEvent)]
    assert shown == (["1", "0"] if page_token else ["2", "1", "0"][: limit + 1])


async def test_listing_refuses_bad_paging_parameters() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    with pytest.raises(errors.InvalidPageSize):
        await service(storage, outbox).list(
            status="", page_size=-1, page_token="", viewer=ANONYMOUS
        )
    with pytest.raises(errors.InvalidStatusFilter):
        await service(storage, outbox).list(
            status="done", page_size=0, page_token="", viewer=ANONYMOUS
        )


@pytest.mark.parametrize("page_size", [1001, 2**31 - 1])
async def test_page_size_is_capped(page_size: int) -> None:
    cap = 1000  # docs/status.md: pages of at most 1000
    # More events than the cap: the scan asks for the cap and one more (to know that more
    # follow), never for what the caller asked.
    storage, outbox = FakeStorage(), FakeOutbox()
    for i in range(cap + 5):
        await outbox.add(event(f"00000000-0000-4000-8000-{i:012d}", timedelta(seconds=i)))
    listing = await service(storage, outbox).list(
        status="", page_size=page_size, page_token="", viewer=ANONYMOUS
    )
    shown = [e.event_id async for e in listing.events if isinstance(e, OutboxEvent)]
    assert listing.limit == cap
    assert len(shown) == cap + 1
    assert shown[0] == f"00000000-0000-4000-8000-{cap + 4:012d}"  # newest first
