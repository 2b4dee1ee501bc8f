"""Listings an hour at a time (adapters/mongo_status_hours.py), against the real FerretDB: the
hours registered, a page whose time runs out, counting only while it is cheap, records of an
older server given their hours, and Cleanup forgetting old hours."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection

from checkout_server.adapters.mongo_outbox import MongoOutbox
from checkout_server.adapters.mongo_status_hours import KEPT_BY_CLEANUP, hours_of
from checkout_server.adapters.mongo_status_records import MongoStatusRecords
from checkout_server.config import ServerSettings
from checkout_server.domain import OutboxEvent
from checkout_server.outbox.document import HOUR, status_document, to_document
from checkout_server.ports import PageEnd
from devstack import FerretDB
from tests.helpers import outbox_event
from tests.integration.postgres_tables import analyze

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Collection = AsyncCollection[dict[str, Any]]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event_id(n: int) -> str:
    return str(uuid.UUID(int=n))


def event(n: int, hours: float) -> OutboxEvent:
    return outbox_event(event_id(n), at=T0 + timedelta(hours=hours))


async def add(outbox: MongoOutbox, placed: dict[int, float]) -> None:
    for n, hours in placed.items():
        await outbox.add(event(n, hours))


def ticking(step_s: float) -> Iterator[float]:
    t = 0.0
    while True:
        yield t
        t += step_s


async def test_every_hour_with_records_is_registered_once(
    outbox_collection: Collection, status_collection: Collection
) -> None:
    outbox = MongoOutbox(outbox_collection, status_collection)
    await add(outbox, {0: 0, 1: 0.5, 2: 2, 3: 2.9})

    registered = [d["_id"] async for d in hours_of(status_collection).find({})]

    assert sorted(registered) == ["2026030112", "2026030114"]


async def test_a_page_out_of_time_ends_with_where_the_next_one_starts(
    outbox_collection: Collection, status_collection: Collection
) -> None:
    outbox = MongoOutbox(outbox_collection, status_collection)
    await add(outbox, {0: 0, 1: 1, 2: 1.5, 3: 3})
    clock = ticking(10.0)  # every look at the clock is 10 s later: one hour per page
    records = MongoStatusRecords(status_collection, page_budget_s=5, clock=lambda: next(clock))

    pages: list[list[str | PageEnd]] = []
    after = ""
    while True:
        page = [
            e.event_id if isinstance(e, OutboxEvent) else e
            async for e in records.scan(status=None, owner=None, after=after, limit=10)
        ]
        pages.append(page)
        if not page or not isinstance(page[-1], PageEnd):
            break
        after = page[-1].cursor

    shown = [[e for e in page if isinstance(e, str)] for page in pages]
    assert shown == [[event_id(3)], [event_id(2), event_id(1)], [event_id(0)]]
    assert [isinstance(page[-1], PageEnd) for page in pages] == [True, True, False]


async def test_a_listing_counts_only_up_to_the_records_it_may_count(
    ferretdb: FerretDB,
    settings: ServerSettings,
    outbox_collection: Collection,
    status_collection: Collection,
) -> None:
    outbox = MongoOutbox(outbox_collection, status_collection)
    await add(outbox, {0: 0, 1: 1, 2: 2})
    analyze(ferretdb, settings.mongo_db, settings.mongo_status_collection)

    counted = MongoStatusRecords(status_collection, count_max_events=3)
    too_many = MongoStatusRecords(status_collection, count_max_events=2)

    assert await counted.count(status=None, owner=None) == 3
    assert await too_many.count(status=None, owner=None) is None


async def test_a_count_slower_than_its_budget_is_not_made_again_at_that_size(
    ferretdb: FerretDB,
    settings: ServerSettings,
    outbox_collection: Collection,
    status_collection: Collection,
) -> None:
    outbox = MongoOutbox(outbox_collection, status_collection)
    await add(outbox, {0: 0, 1: 1, 2: 2})
    analyze(ferretdb, settings.mongo_db, settings.mongo_status_collection)
    clock = ticking(1.0)  # every count seems to take a second
    records = MongoStatusRecords(status_collection, count_budget_s=0.5, clock=lambda: next(clock))

    assert await records.count(status=None, owner=None) == 3  # paid once
    assert await records.count(status=None, owner=None) is None
    await status_collection.delete_one({})
    analyze(ferretdb, settings.mongo_db, settings.mongo_status_collection)
    assert await records.count(status=None, owner=None) == 2  # fewer: counted again


async def test_a_cleanup_counts_again_before_the_statistics_know_it(
    ferretdb: FerretDB,
    settings: ServerSettings,
    outbox_collection: Collection,
    status_collection: Collection,
) -> None:
    """After a Cleanup PostgreSQL's statistics still give the old size: the limit a slow
    count set must not make an empty collection's total unknown."""
    outbox = MongoOutbox(outbox_collection, status_collection)
    await add(outbox, {0: 0, 1: 1, 2: 2})
    analyze(ferretdb, settings.mongo_db, settings.mongo_status_collection)
    clock = ticking(1.0)  # every count seems to take a second
    records = MongoStatusRecords(status_collection, count_budget_s=0.5, clock=lambda: next(clock))
    assert await records.count(status=None, owner=None) == 3
    assert await records.count(status=None, owner=None) is None  # the limit is lowered

    await outbox.delete_all()  # what Cleanup deletes, then tells the records
    records.emptied()

    assert await records.count(status=None, owner=None) == 0


async def test_the_change_feed_reads_an_hour_at_a_time_oldest_change_first(
    outbox_collection: Collection, status_collection: Collection
) -> None:
    second = 1 / 3600
    outbox = MongoOutbox(outbox_collection, status_collection)
    await add(outbox, {0: 1 - 3 * second, 1: 1 - second, 2: 1 + second})  # around 13:00
    records = MongoStatusRecords(status_collection, now=lambda: T0 + timedelta(hours=1.01))
    await records.ensure_indexes()
    assert await records.mark_ready(event_id(0), T0 + timedelta(hours=1 + 2 * second))
    since = T0 + timedelta(hours=1 - 2 * second)

    changed = await records.changed_since(since, limit=10)
    assert [e.event_id for e in changed] == [event_id(n) for n in (1, 2, 0)]
    first_two = await records.changed_since(since, limit=2)
    assert [e.event_id for e in first_two] == [event_id(1), event_id(2)]
    # A day and more behind: by range, the same changes.
    long_after = MongoStatusRecords(status_collection, now=lambda: T0 + timedelta(days=3))
    assert await long_after.changed_since(since, limit=10) == changed


async def test_records_of_an_older_server_are_given_their_hours(
    status_collection: Collection,
) -> None:
    old = [status_document(to_document(event(n, n))) for n in range(3)]
    for record in old:
        del record[HOUR]  # as a server before hours wrote it
    await status_collection.insert_many(old)
    records = MongoStatusRecords(status_collection)
    await records.ensure_indexes()

    await records.give_old_records_hours()

    listed = [e async for e in records.scan(status=None, owner=None, after="", limit=10)]
    assert [e.event_id for e in listed if isinstance(e, OutboxEvent)] == [
        event_id(n) for n in (2, 1, 0)
    ]
    assert await status_collection.count_documents({HOUR: {"$exists": False}}) == 0


async def test_cleanup_forgets_all_but_the_newest_hours(
    outbox_collection: Collection, status_collection: Collection
) -> None:
    outbox = MongoOutbox(outbox_collection, status_collection)
    await add(outbox, {n: n for n in range(KEPT_BY_CLEANUP + 2)})

    assert await outbox.delete_all() == KEPT_BY_CLEANUP + 2

    kept = sorted([d["_id"] async for d in hours_of(status_collection).find({})])
    assert kept == [f"20260301{12 + n}" for n in range(2, KEPT_BY_CLEANUP + 2)]


async def test_the_reconcile_reads_the_last_day_and_one_older_hour_in_turn(
    outbox_collection: Collection, status_collection: Collection
) -> None:
    outbox = MongoOutbox(outbox_collection, status_collection)
    await add(outbox, {0: 0, 1: 1, 2: 2})  # on March 1st
    now = T0 + timedelta(days=10)
    await outbox.add(outbox_event(event_id(9), at=now - timedelta(hours=20)))  # recent
    records = MongoStatusRecords(status_collection, now=lambda: now)

    # The last day fills the limit: an older hour is read all the same.
    calls = [[e.event_id for e in await records.unready(limit=1)] for _ in range(4)]

    recent = event_id(9)
    assert calls == [[recent, event_id(n)] for n in (2, 1, 0, 2)]
