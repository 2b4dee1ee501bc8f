"""The server's outbox and status records on MongoDB (or FerretDB 1.24), via PyMongo async.

The two documents of an event and their fields are described in `outbox/document.py`; this
module stores and queries them. There are no multi-document transactions on FerretDB 1.24,
so the two inserts of an event are ordered so that a crash between them loses nothing: the
outbox message first (the commit point; the relay heals a missing status record), then the
status record. Only features both servers support are used: single-document inserts and
reads, unique and compound indexes. Uniqueness of idempotency keys rests on unique indexes
over `dedup_key` in both collections (outbox messages are swept; the records stay).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import UTC, datetime

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..domain import EventStatus, OutboxEvent
from ..errors import DuplicateIdempotencyKey, InvalidPageToken
from ..outbox import document as f
from ..outbox.document import Document, from_document, status_document, to_document, utc
from .mongo_errors import translated
from .mongo_indexes import ensure_indexes

log = logging.getLogger(__name__)

_DEDUP_INDEX = IndexModel([(f.DEDUP_KEY, ASCENDING)], unique=True, name="dedup_key_unique")
# The events of a video (its upload's and its re-requests'): ownership, the object sweep.
_VIDEO_INDEX = IndexModel([(f.VIDEO_ID, ASCENDING)], name="video")
_OUTBOX_INDEXES = [_DEDUP_INDEX, _VIDEO_INDEX]  # the relay adds its own (mongo_relay_store)
_STATUS_INDEXES = [
    _DEDUP_INDEX,
    _VIDEO_INDEX,
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


class MongoOutbox:
    """Implements ports.Outbox over the outbox and the status records (built by the wiring,
    shared)."""

    def __init__(
        self,
        outbox: AsyncCollection[Document],
        statuses: AsyncCollection[Document],
        *,
        on_added: Callable[[], None] | None = None,
        on_status_changed: Callable[[], None] | None = None,
    ) -> None:
        """`on_added` is called after each outbox message is committed (to wake the relays),
        `on_status_changed` after each status record written or marked ready (to wake
        the watchers); neither may block or raise."""
        self._outbox = outbox
        self._statuses = statuses
        self._on_added = on_added
        self._on_status_changed = on_status_changed

    def _status_changed(self) -> None:
        if self._on_status_changed is not None:
            self._on_status_changed()

    async def ensure_indexes(self) -> None:
        with translated("ensure_indexes"):
            await ensure_indexes(self._outbox, _OUTBOX_INDEXES)
            await ensure_indexes(self._statuses, _STATUS_INDEXES)

    async def add(self, event: OutboxEvent) -> None:
        message = to_document(event)
        with translated("add"):
            try:
                await self._outbox.insert_one(message)
            except DuplicateKeyError:
                raise await self._duplicate(message[f.DEDUP_KEY]) from None
        # Committed: the relay will publish the message whatever happens below.
        if self._on_added is not None:
            self._on_added()
        try:
            await self._statuses.insert_one(status_document(message))
        except DuplicateKeyError:
            with translated("add"):
                if await self._statuses.find_one({f.ID: event.event_id}, {f.ID: 1}):
                    return  # the relay was quicker and wrote the record itself
                # The key was used before the outbox message of that use expired: withdraw
                # ours (a crash before this line publishes it; the relay then finds the key
                # taken and leaves the older record alone).
                await self._outbox.delete_one({f.ID: event.event_id})
                raise await self._duplicate(message[f.DEDUP_KEY]) from None
        except PyMongoError as exc:
            log.warning(
                "status record not written; the relay writes it",
                extra={"event_id": event.event_id, "error": repr(exc)},
            )
        else:
            self._status_changed()

    async def _duplicate(self, dedup_key: str) -> Exception:
        """The error for an insert refused on `dedup_key`: the event holding that key."""
        existing = await self._find_one({f.DEDUP_KEY: dedup_key})
        if existing is None:  # the duplicate was the _id itself: a bug, not a retry
            return RuntimeError(f"duplicate event id for key {dedup_key!r}")
        return DuplicateIdempotencyKey(existing)

    async def _find_one(self, query: Document) -> OutboxEvent | None:
        """A status record, else the outbox message (its record not written yet)."""
        document = await self._statuses.find_one(query)
        if document is None:
            document = await self._outbox.find_one(query)
        return None if document is None else from_document(document)

    async def get(self, event_id: str) -> OutboxEvent | None:
        with translated("get"):
            return await self._find_one({f.ID: event_id})

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> OutboxEvent | None:
        with translated("find_by_idempotency_key"):
            document = await self._statuses.find_one({f.DEDUP_KEY: f.dedup_key(key, owner=owner)})
        return None if document is None else from_document(document)

    async def owns_video(self, video_id: str, owner: str) -> bool:
        with translated("owns_video"):
            found = await self._statuses.find_one({f.VIDEO_ID: video_id, f.OWNER: owner}, {f.ID: 1})
        return found is not None

    async def videos_with_events(self, video_ids: Sequence[str]) -> set[str]:
        # The outbox first, then the status records of the rest: a message is deleted only
        # after its record is written (by `add` or the relay), so an event moving from one
        # to the other between the two queries is seen in one of them. `_id` finds the
        # seed's messages too (no top-level `video_id`: an upload's id is its video's).
        wanted = set(video_ids)
        named: set[str] = set()
        with translated("videos_with_events"):
            for collection in (self._outbox, self._statuses):
                rest = sorted(wanted - named)
                if not rest:
                    break
                found = collection.find(
                    {"$or": [{f.ID: {"$in": rest}}, {f.VIDEO_ID: {"$in": rest}}]},
                    {f.ID: 1, f.VIDEO_ID: 1},
                )
                async for document in found:
                    named |= {str(document[f.ID]), str(document.get(f.VIDEO_ID))} & wanted
        return named

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
        if result.modified_count == 0:
            return False
        self._status_changed()
        return True

    async def unready(self, *, limit: int) -> list[OutboxEvent]:
        with translated("unready"):
            found = self._statuses.find({f.READY_AT: None})
            documents = await found.sort([(f.CREATED_AT, DESCENDING)]).limit(limit).to_list()
        return [from_document(d) for d in documents]

    async def oldest_unsent_created_at(self) -> datetime | None:
        return await oldest_unsent_created_at(self._outbox)

    async def delete_all(self) -> int:
        with translated("delete_all"):
            # Messages first: no message may outlive its record and be published after it.
            messages = await self._outbox.delete_many({})
            records = await self._statuses.delete_many({})
        # A message whose record was never written is an event too.
        return max(records.deleted_count, messages.deleted_count)

    async def ping(self) -> None:
        with translated("ping"):
            await self._statuses.database.command("ping")


async def oldest_unsent_created_at(outbox: AsyncCollection[Document]) -> datetime | None:
    """`created_at` of the oldest `new` message of this outbox collection, or None: the lag
    the server reports and the relay measures (both ports promise this query)."""
    with translated("oldest_unsent"):
        found = outbox.find({f.STATUS: f.NEW}, {f.CREATED_AT: 1})
        documents = await found.sort([(f.CREATED_AT, ASCENDING)]).limit(1).to_list()
    return utc(documents[0][f.CREATED_AT]) if documents else None


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


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        millis, event_id = json.loads(raw)
        if not isinstance(millis, int) or not isinstance(event_id, str):
            raise TypeError(cursor)
        return datetime.fromtimestamp(millis / 1000, UTC), event_id
    except (ValueError, TypeError, binascii.Error):
        raise InvalidPageToken() from None
