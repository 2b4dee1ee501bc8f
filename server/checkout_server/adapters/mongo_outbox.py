"""Outbox on MongoDB (or FerretDB 1.24) through PyMongo's native async API.

Only features both servers support are used: single-document inserts and reads, unique and
compound indexes. Uniqueness of idempotency keys rests on a unique index over `dedup_key`,
which holds the client's key or, when it sent none, the event id: every document has a
distinct value, so the index needs no sparse/partial support (FerretDB 1.24 lacks it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, ExecutionTimeout, WTimeoutError

from ..domain import EventStatus, OutboxEvent
from ..errors import DatabaseUnavailable
from ..ports import DuplicateIdempotencyKey

log = logging.getLogger(__name__)

Document = dict[str, Any]


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
        log.warning("outbox %s failed: %r", action, exc)
        raise DatabaseUnavailable() from exc


class MongoOutbox:
    """Implements ports.Outbox over one collection (built by the wiring, shared)."""

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._collection = collection

    async def ensure_indexes(self) -> None:
        with _translated("ensure_indexes"):
            await self._collection.create_indexes(
                [
                    IndexModel([("dedup_key", ASCENDING)], unique=True, name="dedup_key_unique"),
                    # Listing, newest first (the _id breaks ties for stable pages).
                    IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="created"),
                    # The relay: due events by status.
                    IndexModel([("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="due"),
                    # The status change feed.
                    IndexModel([("updated_at", ASCENDING)], name="updated"),
                ]
            )

    async def add(self, event: OutboxEvent) -> None:
        document = to_document(event)
        with _translated("add"):
            try:
                await self._collection.insert_one(document)
            except DuplicateKeyError:
                existing = await self.find_by_idempotency_key(document["dedup_key"])
                if existing is None:  # the duplicate was the _id itself: a bug, not a retry
                    raise
                raise DuplicateIdempotencyKey(existing) from None

    async def get(self, event_id: str) -> OutboxEvent | None:
        with _translated("get"):
            document = await self._collection.find_one({"_id": event_id})
        return None if document is None else from_document(document)

    async def find_by_idempotency_key(self, key: str) -> OutboxEvent | None:
        with _translated("find_by_idempotency_key"):
            document = await self._collection.find_one({"dedup_key": key})
        return None if document is None else from_document(document)

    async def ping(self) -> None:
        with _translated("ping"):
            await self._collection.database.command("ping")


def to_document(event: OutboxEvent) -> Document:
    """The stored shape: the seed's `_id`/`payload`/`status`/`created_at`, plus relay fields."""
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
    }


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
    )


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
