"""Ports: what the service needs from its backends, as typing.Protocols.

Each method states its contract. Adapters (one module per backend under `adapters/`)
implement them and translate every vendor error into the errors named here (all in
errors.py) at their boundary, so nothing above this line imports a vendor library. The
relay's own ports are in `relay/ports.py`.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
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


class ObjectReader(Protocol):
    """One object being read from its start, in order, over one storage connection (an open
    GET). Calls are sequential. `close` must be called exactly once, also after a failed or
    cancelled `read`; it releases the connection and never raises. Errors of `read`:
    StorageUnavailable (the connection failed or timed out mid-object)."""

    @property
    def size_bytes(self) -> int:
        """The object's size, as storage announced it."""

    async def read(self, max_bytes: int) -> bytes:
        """The next bytes: `max_bytes` of them unless the object ends first, b"" at its end.
        Holds no more than about `max_bytes` in memory (what the connection buffers aside)."""

    async def close(self) -> None:
        """Release the connection, read to the end or not."""


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

    async def open_reader(self, bucket: str, key: str) -> ObjectReader | None:
        """`key` opened for reading from its start (one request), or None when it does not
        exist. The caller closes the reader."""

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object whose key starts with `prefix`; returns how many."""

    async def list_page(
        self, bucket: str, prefix: str, *, start_after: str, limit: int
    ) -> list[StoredObject]:
        """One page of the objects whose key starts with `prefix`, in key order: at most
        `limit` (1..1000), from the first key after `start_after` ("": from the first). The
        next page starts after this one's last key; fewer than `limit` means the end was
        reached. One storage request, whatever the bucket holds."""


class Outbox(Protocol):
    """The commit side of the transactional outbox: what an upload or a re-request writes,
    and what it reads back to decide idempotency. Per event an outbox message (the commit
    point, which the relay publishes) and a status record (outbox/document.py); the status
    records are read for listings and watches through `StatusRecords`. Errors: any
    DatabaseUnavailable, DatabaseTimeout or DatabaseError (adapters/mongo_errors.py says which
    vendor error becomes which).

    Besides the commit side it holds two methods that are about every event's documents as a
    whole, so they stay with the port that writes both: `delete_all` (Cleanup: it must delete
    messages before records, the commit side's own ordering) and `ping` (the database health
    check: uploads commit here, so this is the database the service cannot work without). The
    relay's lag (the oldest unsent message) is not here: the relay measures it
    (relay/ports.OutboxRelayStore), once for the whole deployment.
    """

    async def ensure_indexes(self) -> None:
        """Create the indexes the commit side and the relay rely on (idempotent)."""

    async def add(self, event: OutboxEvent) -> None:
        """Insert a new event: its outbox message, then its status record. Raises
        errors.DuplicateIdempotencyKey (with the event holding the key) when its idempotency
        key, scoped to its owner, is already used by another event (atomic on MongoDB and
        FerretDB: a unique index); an event without a key never collides."""

    async def get(self, event_id: str) -> OutboxEvent | None:
        """The event with this id (its status record, else its outbox message), or None."""

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> OutboxEvent | None:
        """The event `owner` created with this idempotency key, or None (keys are scoped to
        their owner: outbox/document.dedup_key; an empty key finds nothing)."""

    async def videos_with_events(self, video_ids: Sequence[str]) -> set[str]:
        """Of these video ids, those that an event names: an upload's (its id is the video
        id) or a re-request's (its own id, the video's id in `video_id`), by its outbox
        message or its status record. A query per collection, never one per id; a database
        that does not answer raises (an empty set is the database's answer, never a guess)."""

    async def delete_all(self) -> int:
        """Delete every event, both its documents; returns how many events."""

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers."""


@dataclass(frozen=True)
class PageEnd:
    """Where a listing stopped before its page was full: its time was up. The next page
    starts at `cursor`; the events after it are not known to be none."""

    cursor: str


class StatusRecords(Protocol):
    """The status read model: the events' status records as status/ lists, watches and marks
    them (written by `Outbox.add`, and by the relay as it publishes). Errors: as Outbox."""

    async def ensure_indexes(self) -> None:
        """Create the indexes the listings, the change feed and the reconcile rely on
        (idempotent)."""

    async def count(self, *, status: EventStatus | None, owner: str | None) -> int | None:
        """How many events `scan` would yield from the start: those whose API status is
        `status` and those `owner` made, when given. None when there are too many records to
        count cheaply (the adapter says how many)."""

    def emptied(self) -> None:
        """Every record was just deleted (Cleanup): what the adapter learnt of the
        collection's size no longer holds."""

    def scan(
        self, *, status: EventStatus | None, owner: str | None, after: str, limit: int
    ) -> AsyncGenerator[OutboxEvent | PageEnd, None]:
        """Events newest first (by creation time, then id, both descending), filtered as for
        `count`, at most `limit`, starting after the cursor `after` (`cursor_of` an event
        yielded before, also one deleted since, or a PageEnd's; empty: from the newest).
        Streamed from the database cursors, never collected; closing the iterator early
        closes them. A scan whose time runs out before `limit` ends with a PageEnd (more may
        follow). Raises InvalidPageToken for a cursor these records did not make."""

    def cursor_of(self, event: OutboxEvent) -> str:
        """The opaque cursor that makes `scan` go on after `event`."""

    async def owns_video(self, video_id: str, owner: str) -> bool:
        """Whether `owner` made an event of this video (uploaded or re-requested it)."""

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        """Events whose `updated_at` is at or after `since`, oldest change first, at most
        `limit`."""

    async def mark_ready(self, event_id: str, at: datetime, *, error: str = "") -> bool:
        """Record that the event's result exists (sets `ready_at` and `updated_at` once, and
        `error` when the result is a failure result: the event is then `failed`); False when
        it was already marked or does not exist."""

    async def unready(self, *, limit: int) -> list[OutboxEvent]:
        """Events whose result has not been seen yet, newest first, at most `limit`. An
        adapter may read only the recent ones at each call and add up to `limit` older ones
        in turn, so that calls after calls meet every waiting event."""


class StatusChannel(Protocol):
    """The status topic, written to (outbox/announcement.py; adapters/kafka_status.py reads
    it too)."""

    async def send(self, records: Sequence[tuple[str, bytes]]) -> bool:
        """Write these (key, value) records; True once the topic acknowledged every one, False
        when it did not (down, or slower than its timeout). Never raises an outage."""


class UploadRateLimit(Protocol):
    """How many uploads one client may start per time window (per process)."""

    async def admit(self, client: str) -> float | None:
        """Count one upload of `client`: None when it is within its limit, else the seconds
        until it may start another (nothing is counted then)."""


class CallBudget(Protocol):
    """How much of something one client may use per second (per process)."""

    async def take(self, client: str) -> bool:
        """Use one of `client`'s: False when it has none left (nothing is used then)."""


# --- Resumable uploads ------------------------------------------------------------------------


class MultipartStorage(Protocol):
    """S3 multipart uploads driven part by part across streams and processes (a resumable
    upload session owns one). Errors: StorageUnavailable, StorageError (as ObjectStorage)."""

    async def create_multipart(self, bucket: str, key: str, content_type: str) -> str:
        """Open a multipart upload of `key`; returns its S3 upload id."""

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, chunks: Sequence[bytes]
    ) -> str:
        """Store part `number` (1-based) from `chunks` (never joined), checked by the storage
        against a checksum sent with it; returns its ETag. Uploading a number again replaces
        that part. Raises errors.MultipartUploadMissing when the upload is gone."""

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        """Make the object of these (number, ETag) parts visible. Raises
        errors.MultipartUploadMissing when the upload is gone (completed or aborted before:
        the caller tells which by looking at the object), errors.UploadPartConflict when a
        part's ETag is not that of the part the storage holds."""

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        """Discard the upload and its parts; an upload already gone is no error."""

    async def list_multipart(self, bucket: str, prefix: str) -> list[OpenMultipart]:
        """Every multipart upload still open under `prefix`."""

    async def object_sha256(self, bucket: str, key: str) -> tuple[int, str] | None:
        """(size, lowercase hex SHA-256) of the object, streamed (never whole in memory), or
        None when it does not exist."""

    async def object_size(self, bucket: str, key: str) -> int | None:
        """The object's size, or None when it does not exist."""

    async def delete_object(self, bucket: str, key: str) -> None:
        """Delete `key`; deleting a missing key succeeds."""


@dataclass(frozen=True, kw_only=True)
class OpenMultipart:
    """A multipart upload the storage still holds."""

    bucket: str
    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True, kw_only=True)
class UploadSession:
    """A resumable upload session as started: the insert-once fact every other one refers to."""

    upload_id: str
    video_id: str
    bucket: str
    object_key: str
    filename: str
    size_bytes: int
    sha256: str  # declared, lowercase hex or ""
    crc32c: int | None  # declared CRC32C of the whole file
    idempotency_key: str
    owner: str
    part_bytes: int  # every part but the last is this long; part n starts at (n-1) * this
    created_at: datetime
    expires_at: datetime
    # Who started it, for the limit of open sessions per client (api/clients.py): its
    # owner, or with authentication off its address. "" in sessions recorded before.
    client: str = ""


@dataclass(frozen=True, kw_only=True)
class PartCommit:
    """A durable part: stored in the multipart upload and recorded once."""

    number: int  # 1-based
    offset: int
    size_bytes: int
    etag: str
    crc32c: int  # of this part
    running_crc32c: int  # of the file from byte 0 to the end of this part


class SessionEnd(enum.StrEnum):
    """How a session ends, as first claimed: the first claim recorded wins, so these exclude
    each other. A FINISH claim is made when finishing begins and stays while the object is
    completed; the session is not over until its event exists. The values are what the
    store keeps: changing one strands the sessions already recorded with it."""

    FINISH = "finalizing"
    CANCEL = "cancelled"
    EXPIRE = "expired"


@dataclass(frozen=True, kw_only=True)
class WriteLease:
    """The right of one stream to write a session: epoch n of the session's leases."""

    upload_id: str
    epoch: int
    holder: str  # the holding process and stream, for logs and release requests
    expires_at: datetime  # renewed by the holder; others may take over after it (plus skew)
    released: bool = False


class UploadSessionStore(Protocol):
    """The facts of resumable upload sessions. Every fact is inserted once under a unique key
    (the first insert wins, on MongoDB and FerretDB 1.24 alike: never a conditional update);
    only a lease's holder changes its lease (renewal, release). Errors: DatabaseUnavailable,
    DatabaseTimeout, DatabaseError."""

    async def ensure_indexes(self) -> None:
        """Create the indexes the store relies on (idempotent)."""

    async def create(self, session: UploadSession) -> None:
        """Record a new session. Raises errors.DuplicateUploadSession (with the session that
        holds it) when its owner's idempotency key names a session already."""

    async def get(self, upload_id: str) -> UploadSession | None:
        """The session, or None."""

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> UploadSession | None:
        """The session `owner` started with this idempotency key, or None."""

    async def open_sessions(self, client: str, now: datetime) -> int:
        """How many sessions `client` started that are open at `now`: not expired, and no end
        claimed (a finishing one is no longer open)."""

    async def record_multipart(self, upload_id: str, multipart_id: str) -> str:
        """Record the session's S3 upload id; returns the one recorded first (this one, or
        another's that won)."""

    async def multipart_of(self, upload_id: str) -> str | None:
        """The session's recorded S3 upload id, or None."""

    async def commit_part(self, upload_id: str, part: PartCommit) -> PartCommit:
        """Record a durable part; returns the commit recorded first for its number (this one,
        or another writer's: the caller compares ETags)."""

    async def parts(self, upload_id: str) -> list[PartCommit]:
        """The session's committed parts by number."""

    async def end(self, upload_id: str, end: SessionEnd, at: datetime) -> SessionEnd:
        """Claim how the session ends; returns the claim recorded first (this one or another)."""

    async def ending(self, upload_id: str) -> SessionEnd | None:
        """The session's end as first claimed, or None while nothing is claimed."""

    async def latest_lease(self, upload_id: str) -> WriteLease | None:
        """The lease of the highest epoch, or None when none was ever taken."""

    async def take_lease(self, lease: WriteLease) -> bool:
        """Insert the lease of a new epoch; False when another stream took that epoch."""

    async def renew_lease(self, lease: WriteLease, expires_at: datetime) -> None:
        """Extend the holder's own lease."""

    async def release_lease(self, lease: WriteLease) -> None:
        """Mark the holder's own lease released: the next stream may take over at once."""

    async def ask_release(self, upload_id: str, epoch: int, by: str) -> None:
        """Ask the holder of `epoch` to let go (idempotent)."""

    async def release_asked(self, upload_id: str, epoch: int) -> bool:
        """Whether another stream asked the holder of `epoch` to let go."""

    async def expired(self, now: datetime, *, limit: int) -> list[UploadSession]:
        """Sessions whose `expires_at` is before `now`, oldest first, at most `limit`."""

    async def open_multipart_ids(self, multipart_ids: Sequence[str]) -> set[str]:
        """Of these S3 upload ids, those recorded by a session that still exists."""

    async def videos_with_sessions(self, video_ids: Sequence[str]) -> set[str]:
        """Of these video ids, those of a session that still exists (open, finishing, or
        finished and not yet removed by its expiry), in one query."""

    async def delete(self, upload_id: str) -> None:
        """Remove every fact of the session (the terminal marker last)."""

    async def delete_all(self) -> int:
        """Remove every session and all its facts (Cleanup); the number of sessions."""
