"""Events on MongoDB (or FerretDB 1.24) through PyMongo's native async API.

Two collections:
- the **outbox**: one message per event for the relay to publish. Its insert is the commit
  point of an upload; the relay marks it `sent`, and `sent` messages are deleted after a
  retention period, so this collection stays as small as the recent traffic;
- the **status records** (MONGO_STATUS_COLLECTION): one per event, kept until Cleanup; what
  the status API lists and watches. The relay mirrors `sent`/`failed` into them, and writes
  a record itself when one is missing (a server that stopped between the two inserts).

There are no multi-document transactions on FerretDB 1.24, so the two inserts are ordered
so that a crash between them loses nothing: the outbox message first (the relay heals the
missing status record), then the status record. Only features both servers support are
used: single-document inserts and reads, unique and compound indexes. Uniqueness of
idempotency keys rests on unique indexes over `dedup_key` (in both collections, since outbox
messages expire), which holds the client's key or, when it sent none, the event id: every
document has a distinct value, so the index needs no sparse/partial support.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    PyMongoError,
    WTimeoutError,
)

from ..domain import EventStatus, OutboxEvent, Page
from ..errors import DatabaseUnavailable, InvalidPageToken
from ..ports import DuplicateIdempotencyKey
from ..relay.sharding import relay_slot
from ._mongo_indexes import ensure_indexes

log = logging.getLogger(__name__)

Document = dict[str, Any]


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
        log.warning("outbox %s failed: %r", action, exc)
        raise DatabaseUnavailable() from exc


_DEDUP_INDEX = IndexModel([("dedup_key", ASCENDING)], unique=True, name="dedup_key_unique")
_OUTBOX_INDEXES = [_DEDUP_INDEX]  # the relay adds its own (see mongo_relay_store)
_STATUS_INDEXES = [
    _DEDUP_INDEX,
    # Listing, newest first (the _id breaks ties for stable pages).
    IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="created"),
    # Listing by status.
    IndexModel(
        [("status", ASCENDING), ("ready_at", ASCENDING), ("created_at", DESCENDING)],
        name="status_created",
    ),
    # The status change feed.
    IndexModel([("updated_at", ASCENDING)], name="updated"),
    # Events still waiting for their result.
    IndexModel([("ready_at", ASCENDING), ("created_at", DESCENDING)], name="unready"),
]


class MongoOutbox:
    """Implements ports.Outbox over the outbox and the status records (built by the wiring,
    shared)."""

    def __init__(
        self, outbox: AsyncCollection[Document], statuses: AsyncCollection[Document]
    ) -> None:
        self._outbox = outbox
        self._statuses = statuses

    async def ensure_indexes(self) -> None:
        with _translated("ensure_indexes"):
            await ensure_indexes(self._outbox, _OUTBOX_INDEXES)
            await ensure_indexes(self._statuses, _STATUS_INDEXES)

    async def add(self, event: OutboxEvent) -> None:
        message = to_document(event)
        with _translated("add"):
            try:
                await self._outbox.insert_one(message)
            except DuplicateKeyError:
                raise await self._duplicate(message["dedup_key"]) from None
        # Committed: the relay will publish the message whatever happens below.
        try:
            await self._statuses.insert_one(status_document(message))
        except DuplicateKeyError:
            with _translated("add"):
                if await self._statuses.find_one({"_id": event.event_id}, {"_id": 1}):
                    return  # the relay was quicker and wrote the record itself
                # The key was used before the outbox message of that use expired: withdraw
                # ours (a crash before this line publishes it; the relay then finds the key
                # taken and leaves the older record alone).
                await self._outbox.delete_one({"_id": event.event_id})
                raise await self._duplicate(message["dedup_key"]) from None
        except PyMongoError as exc:
            log.warning(
                "status record not written; the relay writes it",
                extra={"event_id": event.event_id, "error": repr(exc)},
            )

    async def _duplicate(self, dedup_key: str) -> Exception:
        """The error for an insert refused on `dedup_key`: the event holding that key."""
        existing = await self._find_one({"dedup_key": dedup_key})
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
        with _translated("get"):
            return await self._find_one({"_id": event_id})

    async def find_by_idempotency_key(self, key: str) -> OutboxEvent | None:
        with _translated("find_by_idempotency_key"):
            document = await self._statuses.find_one({"dedup_key": key})
        return None if document is None else from_document(document)

    async def list_page(self, *, status: EventStatus | None, cursor: str, limit: int) -> Page:
        query = _status_query(status)
        page_query = query
        if cursor:
            created_at, event_id = _decode_cursor(cursor)
            after = {
                "$or": [
                    {"created_at": {"$lt": created_at}},
                    {"created_at": created_at, "_id": {"$lt": event_id}},
                ]
            }
            page_query = {"$and": [query, after]} if query else after
        with _translated("list_page"):
            total = await self._statuses.count_documents(query)
            cursor_ = (
                self._statuses.find(page_query)
                .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
                .limit(limit + 1)
            )
            documents = await cursor_.to_list()
        events = [from_document(d) for d in documents[:limit]]
        more = len(documents) > limit
        return Page(
            events=events, total=total, next_cursor=_encode_cursor(events[-1]) if more else ""
        )

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        with _translated("changed_since"):
            found = self._statuses.find({"updated_at": {"$gte": since}})
            documents = await found.sort([("updated_at", ASCENDING)]).limit(limit).to_list()
        return [from_document(d) for d in documents]

    async def mark_ready(self, event_id: str, at: datetime) -> bool:
        with _translated("mark_ready"):
            result = await self._statuses.update_one(
                {"_id": event_id, "ready_at": None}, {"$set": {"ready_at": at, "updated_at": at}}
            )
        return result.modified_count > 0

    async def unready(self, *, limit: int) -> list[OutboxEvent]:
        with _translated("unready"):
            found = self._statuses.find({"ready_at": None})
            documents = await found.sort([("created_at", DESCENDING)]).limit(limit).to_list()
        return [from_document(d) for d in documents]

    async def delete_all(self) -> int:
        with _translated("delete_all"):
            # Messages first: no message may outlive its record and be published after it.
            messages = await self._outbox.delete_many({})
            records = await self._statuses.delete_many({})
        # A message whose record was never written is an event too.
        return max(records.deleted_count, messages.deleted_count)

    async def ping(self) -> None:
        with _translated("ping"):
            await self._statuses.database.command("ping")


def to_document(event: OutboxEvent) -> Document:
    """The outbox message: the seed's `_id`/`payload`/`status`/`created_at`, plus the relay's
    fields; `status_document` makes the status record from it."""
    return {
        "_id": event.event_id,
        "video_id": event.video_id,
        "payload": {
            "video_id": event.video_id,
            "bucket": event.bucket,
            "object_key": event.object_key,
            "filename": event.filename,
            "content_type": event.content_type,
            "size_bytes": event.size_bytes,
            "sha256": event.sha256,
        },
        "status": event.status.value,
        "created_at": event.created_at,
        "updated_at": event.updated_at,
        "dedup_key": event.idempotency_key or event.event_id,
        "idempotency_key": event.idempotency_key or None,
        # For the relay: publish attempts so far, and when the next one is due.
        "attempts": 0,
        "next_attempt_at": event.created_at,
        "error": event.error or None,
        # The relay's shard slot (a hash of the id), so relays can select their shards.
        "relay_slot": relay_slot(event.event_id),
        # Set once the detection result is seen in object storage (the API status is then
        # `ready`); kept apart from `status`, which belongs to the relay.
        "ready_at": event.ready_at,
    }


# The relay's bookkeeping, which the status records do not carry.
_RELAY_FIELDS = ("attempts", "next_attempt_at", "relay_slot")


def status_document(message: Mapping[str, Any]) -> Document:
    """The status record of an outbox message (also how the relay writes a missing one)."""
    return {k: v for k, v in message.items() if k not in _RELAY_FIELDS}


def from_document(document: Mapping[str, Any]) -> OutboxEvent:
    payload = document.get("payload") or {}
    return OutboxEvent(
        event_id=str(document["_id"]),
        video_id=str(document.get("video_id") or payload.get("video_id") or document["_id"]),
        bucket=str(payload.get("bucket", "")),
        object_key=str(payload.get("object_key", "")),
        filename=str(payload.get("filename", "")),
        content_type=str(payload.get("content_type", "")),
        size_bytes=int(payload.get("size_bytes", 0)),
        sha256=str(payload.get("sha256", "")),
        status=EventStatus(document.get("status", EventStatus.NEW.value)),
        created_at=_utc(document["created_at"]),
        updated_at=_utc(document.get("updated_at") or document["created_at"]),
        idempotency_key=str(document.get("idempotency_key") or ""),
        error=str(document.get("error") or ""),
        ready_at=_utc(document["ready_at"]) if document.get("ready_at") else None,
    )


def _status_query(status: EventStatus | None) -> Document:
    if status is None:
        return {}
    if status is EventStatus.READY:
        return {"ready_at": {"$ne": None}}
    return {"status": status.value, "ready_at": None}


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


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
