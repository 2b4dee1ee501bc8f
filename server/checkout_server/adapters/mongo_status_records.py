"""The status read model on MongoDB (or FerretDB 1.24), via PyMongo async: the status records
as the status API lists, watches and marks them.

The records are written by the commit side (`mongo_outbox.py`) and by the relay
(`mongo_relay_store.py`); this module only queries them and sets `ready_at`. Their fields are
described in `outbox/document.py`. Listing pages are keyed by (created_at, _id), so a page
token stays valid when the event it names is deleted meanwhile. A listing reads the records
one creation hour at a time, newest first (`mongo_status_hours.py` says why), and stops at
its time budget with a PageEnd; it counts them only while the collection is small enough.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime, timedelta

import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from ..domain import EventStatus, OutboxEvent
from ..errors import InvalidPageToken
from ..outbox import document as f
from ..outbox.document import Document, from_document, hour_of
from ..ports import PageEnd
from .mongo_errors import translated
from .mongo_indexes import ensure_indexes
from .mongo_status_hours import MongoStatusHours

log = logging.getLogger(__name__)

# Besides the commit side's (dedup key, video: mongo_outbox).
_INDEXES = [
    # Listing, newest first (the _id breaks ties for stable pages).
    IndexModel([(f.CREATED_AT, DESCENDING), (f.ID, DESCENDING)], name="created"),
    # Listing by status.
    IndexModel(
        [(f.STATUS, ASCENDING), (f.READY_AT, ASCENDING), (f.CREATED_AT, DESCENDING)],
        name="status_created",
    ),
    # An uploader's listing (authentication on): its own events, newest first.
    IndexModel(
        [(f.OWNER, ASCENDING), (f.CREATED_AT, DESCENDING), (f.ID, DESCENDING)],
        name="owner_created",
    ),
    # The status change feed, an hour of changes at a time; by range when far behind.
    IndexModel([(f.UPDATED_HOUR, ASCENDING), (f.UPDATED_AT, ASCENDING)], name="updated_hour"),
    IndexModel([(f.UPDATED_AT, ASCENDING)], name="updated"),
    # Events still waiting for their result.
    IndexModel([(f.READY_AT, ASCENDING), (f.CREATED_AT, DESCENDING)], name="unready"),
    # Listing, an hour at a time (the equality that FerretDB hands to its database).
    IndexModel(
        [(f.HOUR, ASCENDING), (f.CREATED_AT, DESCENDING), (f.ID, DESCENDING)],
        name="hour_created",
    ),
]
# The hours collection's mark that every record has its `hour` (`give_old_records_hours`).
_HOURS_GIVEN = "migration:hours-given"
HOURS_GIVING_TIMEOUT_S = 3600.0  # the most that one pass over the records may take
HOURS_GIVEN_PAUSE_S = 3600.0  # between two looks at the mark, once it is there
# `unready` reads every hour this recent at each call, and one older hour in turn.
UNREADY_RECENT = timedelta(hours=24)
# `changed_since` reads the changes an hour at a time over at most this many hours; further
# back (a feed that could not read for a day) it reads by range, over every record.
FEED_HOURS_MAX = 24
# Writers' clocks may be ahead of this process's: the feed reads up to this far ahead.
FEED_CLOCK_SKEW = timedelta(minutes=1)


class MongoStatusRecords:
    """Implements ports.StatusRecords over the status records (built by the wiring, shared)."""

    def __init__(
        self,
        statuses: AsyncCollection[Document],
        *,
        count_max_events: int = 20_000,
        count_budget_s: float = 0.25,
        page_budget_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`count_max_events`, `count_budget_s`, `page_budget_s`: LIST_COUNT_MAX_EVENTS,
        LIST_COUNT_BUDGET_S, LIST_PAGE_BUDGET_S; `clock` times pages and counts, `now` says
        which hours are recent."""
        self._statuses = statuses
        self._hours = MongoStatusHours(statuses)
        self._count_max_events = self._count_limit = count_max_events
        self._count_budget_s = count_budget_s
        self._page_budget_s = page_budget_s
        self._clock = clock
        self._now = now
        self._swept: str | None = None  # the older hour `unready` read last

    async def ensure_indexes(self) -> None:
        with translated("ensure_indexes"):
            await ensure_indexes(self._statuses, _INDEXES)

    async def give_old_records_hours(self) -> float:
        """A background round (a Supervisor's): give the records an older server wrote their
        `hour` and register those hours, so that listings show them; the pause before the
        next round. Done once per collection, then marked: on FerretDB its query reads every
        record (seconds at 100,000), which no socket timeout may cut short."""
        with translated("give_old_records_hours"):
            if await self._hours.is_marked(_HOURS_GIVEN):
                return HOURS_GIVEN_PAUSE_S
            with pymongo.timeout(HOURS_GIVING_TIMEOUT_S):
                found = self._statuses.find({f.HOUR: {"$exists": False}}, {f.CREATED_AT: 1})
                given = 0
                async for document in found.batch_size(1000):
                    hour = hour_of(document[f.CREATED_AT])
                    await self._hours.register([hour])
                    await self._statuses.update_one(
                        {f.ID: document[f.ID]}, {"$set": {f.HOUR: hour}}
                    )
                    given += 1
            await self._hours.mark(_HOURS_GIVEN)
        if given:
            log.info("status records given their hour", extra={"records": given})
        return HOURS_GIVEN_PAUSE_S

    async def owns_video(self, video_id: str, owner: str) -> bool:
        with translated("owns_video"):
            found = await self._statuses.find_one({f.VIDEO_ID: video_id, f.OWNER: owner}, {f.ID: 1})
        return found is not None

    async def count(self, *, status: EventStatus | None, owner: str | None) -> int | None:
        """None above LIST_COUNT_MAX_EVENTS records, by the database's estimate (MongoDB's
        collection metadata, PostgreSQL's statistics under FerretDB: no record is read).
        Before PostgreSQL has measured the collection (its statistics say -1 until autovacuum
        first analyzes it, within a minute of the first 50 writes), it reads the ids of at
        most that many records and one more: FerretDB hands a find with neither filter nor
        sort to its database with the limit.

        A count that takes longer than LIST_COUNT_BUDGET_S lowers the limit below the
        estimate it was made at, for the life of this process: FerretDB 1.24 counts by
        reading every record, so each later listing at that size would pay the same again."""
        with translated("count"):
            stats = await self._statuses.aggregate([{"$collStats": {"count": {}}}])
            estimate = sum([int(s.get("count") or 0) async for s in stats])
            if estimate < 0:
                found = self._statuses.find({}, {f.ID: 1}).limit(self._count_max_events + 1)
                estimate = len(await found.to_list())
            if estimate > self._count_max_events:
                return None
            started = self._clock()
            total = await self._statuses.count_documents(_listing_query(status, owner))
        took = self._clock() - started
        if took > self._count_budget_s:
            self._count_max_events = max(estimate - 1, 0)
            log.warning(
                "counting the status records is slow: listings stop counting at this size",
                extra={"records": estimate, "seconds": round(took, 3)},
            )
        return total

    def emptied(self) -> None:
        """Counting an empty collection is cheap again, although PostgreSQL's statistics
        still give its old size until autovacuum measures it (within a minute or so)."""
        self._count_max_events = self._count_limit

    async def scan(
        self, *, status: EventStatus | None, owner: str | None, after: str, limit: int
    ) -> AsyncGenerator[OutboxEvent | PageEnd, None]:
        query = _listing_query(status, owner)
        cursor = _decode_cursor(after) if after else None
        first = hour_of(cursor[0]) if cursor else None
        if cursor is not None and cursor == (_hour_start(hour_of(cursor[0])), ""):
            first = hour_of(cursor[0] - timedelta(hours=1))  # a PageEnd's: that hour is done
        deadline = self._clock() + self._page_budget_s
        hours = await self._hours_newest_first("scan")
        if first is not None:
            hours = [h for h in hours if h <= first]
        left = limit
        for i, hour in enumerate(hours):
            wanted = [query] if query else []
            if cursor is not None and hour == first:
                wanted.append(_older_than(*cursor))
            # The hour alone at the top level: the equality FerretDB hands to its database.
            found = (
                self._statuses.find({f.HOUR: hour, **({"$and": wanted} if wanted else {})})
                .sort([(f.CREATED_AT, DESCENDING), (f.ID, DESCENDING)])
                .limit(left)
            )
            try:
                with translated("scan"):
                    async for document in found:
                        yield from_document(document)
                        left -= 1
            finally:
                await found.close()
            if left <= 0 or i == len(hours) - 1:
                return
            if self._clock() >= deadline:
                yield PageEnd(_encode_position(_hour_start(hour), ""))
                return

    def cursor_of(self, event: OutboxEvent) -> str:
        return _encode_position(event.created_at, event.event_id)

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        """An hour of changes at a time (`updated_hour`, an equality FerretDB hands to its
        database, where a range on `updated_at` made it read every record: the fallback
        poll outlasted its timeout at 100,000 records); by range when `since` is more than
        FEED_HOURS_MAX hours back."""
        hours = _hours_between(since, self._now() + FEED_CLOCK_SKEW)
        queries: list[Document] = (
            [{f.UPDATED_HOUR: hour, f.UPDATED_AT: {"$gte": since}} for hour in hours]
            if len(hours) <= FEED_HOURS_MAX
            else [{f.UPDATED_AT: {"$gte": since}}]
        )
        changed: list[Document] = []
        with translated("changed_since"):
            for query in queries:
                found = self._statuses.find(query).sort([(f.UPDATED_AT, ASCENDING)])
                changed += await found.limit(limit - len(changed)).to_list()
                if len(changed) >= limit:
                    break
        return [from_document(d) for d in changed]

    async def mark_ready(self, event_id: str, at: datetime, *, error: str = "") -> bool:
        outcome: Document = {f.READY_AT: at, **f.changed_at(at)}
        if error:
            outcome[f.ERROR] = error
        with translated("mark_ready"):
            result = await self._statuses.update_one(
                {f.ID: event_id, f.READY_AT: None}, {"$set": outcome}
            )
        return result.modified_count > 0

    async def unready(self, *, limit: int) -> list[OutboxEvent]:
        """An hour at a time, as listings read, so that the work grows with the events of
        the hours read, never with the collection: up to `limit` from the hours of the last
        UNREADY_RECENT, newest first, then up to `limit` more from one older hour, the next
        one back from the last call's (from the newest again after the oldest), so that
        every waiting event is met in turn."""
        hours = await self._hours_newest_first("unready")
        recent_since = hour_of(self._now() - UNREADY_RECENT)
        waiting: list[OutboxEvent] = []
        for hour in (h for h in hours if h >= recent_since):
            waiting += (await self._waiting_in(hour))[: limit - len(waiting)]
            if len(waiting) >= limit:
                break
        older = [h for h in hours if h < recent_since]
        if older:
            after = [h for h in older if self._swept is None or h < self._swept]
            self._swept = (after or older)[0]
            waiting += (await self._waiting_in(self._swept))[:limit]
        return waiting

    async def _waiting_in(self, hour: str) -> list[OutboxEvent]:
        """The events of this hour still waiting for a result, newest first."""
        with translated("unready"):
            found = self._statuses.find({f.HOUR: hour, f.READY_AT: None})
            documents = await found.sort([(f.CREATED_AT, DESCENDING)]).to_list()
        return [from_document(d) for d in documents]

    async def _hours_newest_first(self, action: str) -> list[str]:
        with translated(action):
            return await self._hours.newest_first()


def _listing_query(status: EventStatus | None, owner: str | None) -> Document:
    query: Document = {}
    if status is EventStatus.READY:
        query = {f.READY_AT: {"$ne": None}, f.ERROR: None}
    elif status is EventStatus.FAILED:
        # Failed publishing (the relay's), or a failure result (the runner's).
        query = {
            "$or": [
                {f.STATUS: status.value, f.READY_AT: None},
                {f.READY_AT: {"$ne": None}, f.ERROR: {"$ne": None}},
            ]
        }
    elif status is not None:
        query = {f.STATUS: status.value, f.READY_AT: None}
    if owner is not None:
        query[f.OWNER] = owner
    return query


def _older_than(created_at: datetime, event_id: str) -> Document:
    """After (created_at, event_id) in the listing's order (newest first)."""
    return {
        "$or": [
            {f.CREATED_AT: {"$lt": created_at}},
            {f.CREATED_AT: created_at, f.ID: {"$lt": event_id}},
        ]
    }


def _hours_between(first: datetime, last: datetime) -> list[str]:
    """The hours from `first`'s to `last`'s, oldest first."""
    start = _hour_start(hour_of(first))
    count = max(0, int((last - start) // timedelta(hours=1))) + 1
    return [hour_of(start + timedelta(hours=n)) for n in range(count)]


def _hour_start(hour: str) -> datetime:
    return datetime.strptime(hour, "%Y%m%d%H").replace(tzinfo=UTC)


def _encode_position(created_at: datetime, event_id: str) -> str:
    """A cursor: after (created_at, event_id); an empty id is before every event of that
    millisecond (a PageEnd at the start of an hour: every older event follows)."""
    millis = int(created_at.timestamp() * 1000)
    raw = json.dumps([millis, event_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# A cursor is about 70 characters (milliseconds and a UUID); anything much longer is not one.
MAX_CURSOR_CHARS = 256


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The place `_encode_position` wrote; InvalidPageToken for anything else a client sends
    (not base64, not JSON, not the pair, a time no datetime holds, too long)."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        millis, event_id = json.loads(raw)
        if not isinstance(millis, int) or not isinstance(event_id, str):
            raise TypeError(cursor)
        return datetime.fromtimestamp(millis / 1000, UTC), event_id
    except (ValueError, TypeError, OverflowError, OSError, binascii.Error):
        # OverflowError and OSError: milliseconds beyond what the platform's time holds.
        raise InvalidPageToken() from None
