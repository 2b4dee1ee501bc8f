"""Ports: what the service needs from its backends, as typing.Protocols.

Each method states its contract. Adapters (one module per backend under `adapters/`)
implement them and translate every vendor error into the errors named here (all in
errors.py) at their boundary, so nothing above this line imports a vendor library. The
relay's own ports are in `relay/ports.py`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Protocol

from .domain import EventStatus, OutboxEvent, StoredObject


class ObjectWriter(Protocol):
    """One object being written, part by part, in order. Nothing is visible until `finish`.

    Calls are sequential: no call starts while another runs (a cancelled `write_part` has
    stopped before `abort` starts). Either `finish` or `abort` must be called exactly once;
    after `abort` no object and no pending multipart upload remains. Bodies are given as the
    chunks they were received in, never joined; the writer reads them only during the call.
    Every body is checked by the storage against a checksum the writer sends with it, so a
    body damaged on the way is refused, not stored. Errors: StorageUnavailable.
    """

    async def write_part(self, chunks: Sequence[bytes]) -> None:
        """Append one full part: `chunks` together are at least the storage's minimum part
        size."""

    async def finish(self, last: Sequence[bytes]) -> None:
        """Append the last (possibly short or empty) part and make the object visible. When
        no `write_part` came before, the whole object goes up in this one request."""

    async def abort(self) -> None:
        """Discard everything written, including an object `finish` made visible; safe to
        call at any point after the previous call returned, even if it failed or was
        cancelled (also during a multipart upload's creation); never raises (it retries
        while the storage is unreachable)."""


class ObjectStorage(Protocol):
    """S3-style object storage. Errors: StorageUnavailable for a failure a retry may mend,
    StorageError for a refusal it cannot (credentials, permissions, a missing bucket)."""

    async def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist."""

    def open_writer(self, bucket: str, key: str, content_type: str) -> ObjectWriter:
        """Start writing `key`; no request is made until the first part is written."""

    async def delete(self, bucket: str, key: str) -> None:
        """Delete `key`; deleting a missing key succeeds."""

    async def stat(self, bucket: str, key: str) -> StoredObject | None:
        """Size and modification time of `key`, or None when it does not exist."""

    async def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes | None:
        """The whole object, or None when it does not exist. Raises errors.ObjectTooLarge
        when it is larger than `max_bytes` (nothing beyond that is read)."""

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object whose key starts with `prefix`; returns how many."""


class Outbox(Protocol):
    """The transactional outbox as the API sees it: per event an outbox message and a status
    record (outbox/document.py). Errors: any DatabaseUnavailable, DatabaseTimeout or
    DatabaseError (adapters/mongo_errors.py says which vendor error becomes which)."""

    async def ensure_indexes(self) -> None:
        """Create the indexes the service and the relay rely on (idempotent)."""

    async def add(self, event: OutboxEvent) -> None:
        """Insert a new event. Raises errors.DuplicateIdempotencyKey when its idempotency key is
        already used by another event (atomic on MongoDB and FerretDB: a unique index)."""

    async def get(self, event_id: str) -> OutboxEvent | None:
        """The event with this id, or None."""

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> OutboxEvent | None:
        """The event `owner` created with this idempotency key, or None (keys are scoped to
        their owner: outbox/document.dedup_key)."""

    async def count(self, *, status: EventStatus | None, owner: str | None) -> int:
        """How many events `scan` would yield from the start: those whose API status is
        `status` and those `owner` made, when given."""

    def scan(
        self, *, status: EventStatus | None, owner: str | None, after: str, limit: int
    ) -> AsyncGenerator[OutboxEvent, None]:
        """Events newest first (by creation time, then id), filtered as for `count`, at most
        `limit`, starting after the cursor `after` (`cursor_of` an event yielded before;
        empty: from the newest). Streamed from the database cursor, never collected; closing
        the iterator early closes that cursor. Raises InvalidPageToken for a cursor this
        outbox did not make."""

    def cursor_of(self, event: OutboxEvent) -> str:
        """The opaque cursor that makes `scan` go on after `event`."""

    async def owns_video(self, video_id: str, owner: str) -> bool:
        """Whether `owner` made an event of this video (uploaded or re-requested it)."""

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        """Events whose `updated_at` is at or after `since`, oldest change first."""

    async def mark_ready(self, event_id: str, at: datetime) -> bool:
        """Record that the event's result exists (sets `ready_at` and `updated_at` once);
        False when it was already marked or does not exist."""

    async def unready(self, *, limit: int) -> list[OutboxEvent]:
        """Events whose result has not been seen yet, newest first, at most `limit`."""

    async def oldest_unsent_created_at(self) -> datetime | None:
        """`created_at` of the oldest outbox message still `new` (not yet on Kafka), or
        None when the relay has caught up."""

    async def delete_all(self) -> int:
        """Delete every event; returns how many."""

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers."""


class UploadRateLimit(Protocol):
    """How many uploads one client may start per time window (per process)."""

    async def admit(self, client: str) -> float | None:
        """Count one upload of `client`: None when it is within its limit, else the seconds
        until it may start another (nothing is counted then)."""
