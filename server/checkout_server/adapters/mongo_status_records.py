"""The status read model on MongoDB (or FerretDB 1.24), via PyMongo async: the status records
as the status API lists, watches and marks them.

The records are written by the commit side (`mongo_outbox.py`) and by the relay
(`mongo_relay_store.py`); this module only queries them and sets `ready_at`. Their fields are
described in `outbox/document.py`. Listing pages are keyed by (created_at, _id), so a page
token stays valid when the event it names is deleted meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from ..domain import EventStatus, OutboxEvent
from ..errors import InvalidPageToken
from ..outbox import document as f
from ..outbox.document import Document, from_document
from .mongo_errors import translated
from .mongo_indexes import ensure_indexes

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
    # The status change feed.
    IndexModel([(f.UPDATED_AT, ASCENDING)], name="updated"),
    # Events still waiting for their result.
    IndexModel([(f.READY_AT, ASCENDING), (f.CREATED_AT, DESCENDING)], name="unready"),
]


class MongoStatusRecords:
    """Implements ports.StatusRecords over the status records (built by the wiring, shared)."""

    def __init__(self, statuses: AsyncCollection[Document]) -> None:
        self._statuses = statuses

    async def ensure_indexes(self) -> None:
        with translated("ensure_indexes"):
            await ensure_indexes(self._statuses, _INDEXES)

    async def owns_video(self, video_id: str, owner: str) -> bool:
        with translated("owns_video"):
            found = await self._statuses.find_one({f.VIDEO_ID: video_id, f.OWNER: owner}, {f.ID: 1})
        return found is not None

    async def count(self, *, status: EventStatus | None, owner: str | None) -> int:
        with translated("count"):
            return await self._statuses.count_documents(_listing_query(status, owner))

    async def scan(
        self, *, status: EventStatus | None, owner: str | None, after: str, limit: int
    ) -> AsyncGenerator[OutboxEvent, None]:
        query = _listing_query(status, owner)
        if after:
            created_at, event_id = _decode_cursor(after)
            older = {
                "$or": [
                    {f.CREATED_AT: {"$lt": created_at}},
                    {f.CREATED_AT: created_at, f.ID: {"$lt": event_id}},
                ]
            }
            query = {"$and": [query, older]} if query else older
        found = (
            self._statuses.find(query)
            .sort([(f.CREATED_AT, DESCENDING), (f.ID, DESCENDING)])
            .limit(limit)
        )
        try:
            with translated("scan"):
                async for document in found:
                    yield from_document(document)
        finally:
            await found.close()

    def cursor_of(self, event: OutboxEvent) -> str:
        return _encode_cursor(event)

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        with translated("changed_since"):
            found = self._statuses.find({f.UPDATED_AT: {"$gte": since}})
            documents = await found.sort([(f.UPDATED_AT, ASCENDING)]).limit(limit).to_list()
        return [from_document(d) for d in documents]

    async def mark_ready(self, event_id: str, at: datetime, *, error: str = "") -> bool:
        outcome: Document = {f.READY_AT: at, f.UPDATED_AT: at}
        if error:
            outcome[f.ERROR] = error
        with translated("mark_ready"):
            result = await self._statuses.update_one(
                {f.ID: event_id, f.READY_AT: None}, {"$set": outcome}
            )
        return result.modified_count > 0

    async def unready(self, *, limit: int) -> list[OutboxEvent]:
        with translated("unready"):
            found = self._statuses.find({f.READY_AT: None})
            documents = await found.sort([(f.CREATED_AT, DESCENDING)]).limit(limit).to_list()
        return [from_document(d) for d in documents]


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


def _encode_cursor(event: OutboxEvent) -> str:
    millis = int(event.created_at.timestamp() * 1000)
    raw = json.dumps([millis, event.event_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# A cursor is about 70 characters (milliseconds and a UUID); anything much longer is not one.
MAX_CURSOR_CHARS = 256


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The place `_encode_cursor` wrote; InvalidPageToken for anything else a client sends
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
