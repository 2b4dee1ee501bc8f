"""The stored shape of an event, shared by the server and the relay: field names and mapping.

Every event has two documents with the same `_id` (the event id):
- the **outbox message**: the seed's `_id`/`payload`/`status`/`created_at`, plus the relay's
  bookkeeping (`RELAY_FIELDS`). Its insert is the commit point of an upload; the relay
  publishes it, marks it `sent` and sweeps it after a retention period;
- the **status record**: the same fields without the relay's bookkeeping, plus `ready_at`;
  kept until Cleanup, and what the status API lists and watches.

Field names are spelled here only; adapters, queries and indexes use these constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from ..domain import EventStatus, OutboxEvent
from .sharding import relay_slot

Document = dict[str, Any]

# --- Fields of both documents ----------------------------------------------------------------
ID: Final = "_id"  # the event id
VIDEO_ID: Final = "video_id"
PAYLOAD: Final = "payload"  # bucket, object key, filename, content type, size, sha256
STATUS: Final = "status"  # new -> sent | failed (the relay's; `ready` is `ready_at`)
CREATED_AT: Final = "created_at"
UPDATED_AT: Final = "updated_at"  # moves whenever `status`, `error` or `ready_at` does
# The client's idempotency key, or else the event id: every document has a distinct value,
# so a plain unique index over it decides races without sparse or partial indexes.
DEDUP_KEY: Final = "dedup_key"
IDEMPOTENCY_KEY: Final = "idempotency_key"  # the client's key, or None
# Why the event failed for good, or None: the relay's reason (with `status: failed`), or the
# reason and message of the runner's failure result (with `ready_at`).
ERROR: Final = "error"
READY_AT: Final = "ready_at"  # when the detection (or failure) result was first seen, or None
# The W3C trace context (`00-<trace id>-<span id>-<flags>`) of the request that made the
# event, or None: the relay's publish span continues that trace.
TRACEPARENT: Final = "traceparent"
# The authenticated client that made the event, or None (authentication off): uploaders see
# only their own events.
OWNER: Final = "owner"
# The UTC hour `created_at` falls in (`hour_of`): listings read the records an hour at a time
# (adapters/mongo_status_hours.py).
HOUR: Final = "hour"
# The UTC hour `updated_at` falls in, set with it (`changed_at`): the change feed reads the
# records an hour of changes at a time. Absent from records an older writer changed last.
UPDATED_HOUR: Final = "updated_hour"

# --- Inside `payload` --------------------------------------------------------------------------
BUCKET: Final = "bucket"
OBJECT_KEY: Final = "object_key"
FILENAME: Final = "filename"
CONTENT_TYPE: Final = "content_type"
SIZE_BYTES: Final = "size_bytes"
SHA256: Final = "sha256"

# --- The relay's bookkeeping (outbox messages only) --------------------------------------------
ATTEMPTS: Final = "attempts"  # publish attempts so far
NEXT_ATTEMPT_AT: Final = "next_attempt_at"  # when the next attempt is due
RELAY_SLOT: Final = "relay_slot"  # the event's shard slot (sharding.relay_slot of the id)
SENT_AT: Final = "sent_at"  # when Kafka acknowledged it (the sweeper's clock)

RELAY_FIELDS: Final = (ATTEMPTS, NEXT_ATTEMPT_AT, RELAY_SLOT)

# The status values as stored.
NEW: Final = EventStatus.NEW.value
SENT: Final = EventStatus.SENT.value
FAILED: Final = EventStatus.FAILED.value


def to_document(event: OutboxEvent) -> Document:
    """The outbox message of a new event; `status_document` makes its status record."""
    return {
        ID: event.event_id,
        VIDEO_ID: event.video_id,
        PAYLOAD: {
            VIDEO_ID: event.video_id,
            BUCKET: event.bucket,
            OBJECT_KEY: event.object_key,
            FILENAME: event.filename,
            CONTENT_TYPE: event.content_type,
            SIZE_BYTES: event.size_bytes,
            SHA256: event.sha256,
        },
        STATUS: event.status.value,
        CREATED_AT: event.created_at,
        UPDATED_AT: event.updated_at,
        DEDUP_KEY: dedup_key(event.idempotency_key, owner=event.owner) or event.event_id,
        IDEMPOTENCY_KEY: event.idempotency_key or None,
        ATTEMPTS: 0,
        NEXT_ATTEMPT_AT: event.created_at,
        ERROR: event.error or None,
        RELAY_SLOT: relay_slot(event.event_id),
        READY_AT: event.ready_at,
        TRACEPARENT: event.traceparent or None,
        OWNER: event.owner or None,
        HOUR: hour_of(event.created_at),
        UPDATED_HOUR: hour_of(event.updated_at),
    }


def changed_at(at: datetime) -> Document:
    """The fields every write that changes a record's status sets: `updated_at` and its hour."""
    return {UPDATED_AT: at, UPDATED_HOUR: hour_of(at)}


def hour_of(at: datetime) -> str:
    """The listing hour of a creation time: `YYYYMMDDHH` in UTC (they sort as the hours)."""
    return utc(at).astimezone(UTC).strftime("%Y%m%d%H")


def dedup_key(idempotency_key: str, *, owner: str) -> str:
    """The stored `dedup_key` of a client's idempotency key: scoped to its owner, so one
    client's key never finds another client's upload (the key alone without an owner, as
    before authentication existed). Owners (client names) never contain ':'."""
    if not idempotency_key:
        return ""
    return f"{owner}:{idempotency_key}" if owner else idempotency_key


def status_document(message: Mapping[str, Any]) -> Document:
    """The status record of an outbox message (also how the relay writes a missing one, also
    of a message without `hour`: the seed's, or an older server's)."""
    record = {k: v for k, v in message.items() if k not in RELAY_FIELDS}
    record.setdefault(HOUR, hour_of(message[CREATED_AT]))
    return record


def from_document(document: Mapping[str, Any]) -> OutboxEvent:
    """The event of an outbox message or a status record, also one the seed service wrote
    (no `updated_at`, `video_id` only in the payload)."""
    payload = document.get(PAYLOAD) or {}
    return OutboxEvent(
        event_id=str(document[ID]),
        video_id=str(document.get(VIDEO_ID) or payload.get(VIDEO_ID) or document[ID]),
        bucket=str(payload.get(BUCKET, "")),
        object_key=str(payload.get(OBJECT_KEY, "")),
        filename=str(payload.get(FILENAME, "")),
        content_type=str(payload.get(CONTENT_TYPE, "")),
        size_bytes=int(payload.get(SIZE_BYTES, 0)),
        sha256=str(payload.get(SHA256, "")),
        status=EventStatus(document.get(STATUS, NEW)),
        created_at=utc(document[CREATED_AT]),
        updated_at=utc(document.get(UPDATED_AT) or document[CREATED_AT]),
        idempotency_key=str(document.get(IDEMPOTENCY_KEY) or ""),
        error=str(document.get(ERROR) or ""),
        ready_at=utc(document[READY_AT]) if document.get(READY_AT) else None,
        traceparent=str(document.get(TRACEPARENT) or ""),
        owner=str(document.get(OWNER) or ""),
    )


def utc(value: datetime) -> datetime:
    """A stored time as a tz-aware UTC datetime (BSON dates come back naive unless the
    client is tz-aware)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
