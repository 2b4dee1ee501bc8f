"""In-memory fakes of the ports, for fast unit tests only (integration tests use real servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from checkout_server.domain import EventStatus, OutboxEvent, StoredObject
from checkout_server.errors import (
    DatabaseUnavailable,
    DuplicateIdempotencyKey,
    InvalidPageToken,
    ObjectTooLarge,
    PublisherUnavailable,
    StorageUnavailable,
)
from checkout_server.outbox.document import dedup_key
from checkout_server.outbox.sharding import relay_slot
from checkout_server.relay.ports import Lease, Message, PendingEvent, PublishOutcome, PublishResult
from checkout_server.status.service import StatusService, StatusSettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)
T0 = NOW


@dataclass
class FakeWriter:
    """Checks the ObjectWriter contract: calls one at a time, `finish` or `abort` last."""

    storage: FakeStorage
    bucket: str
    key: str
    parts: list[bytes] = field(default_factory=list)
    finished: bool = False
    aborted: bool = False
    writing: bool = False  # a write_part is running

    async def write_part(self, chunks: Sequence[bytes]) -> None:
        data = b"".join(chunks)
        assert not self.finished
        assert not self.aborted
        assert not self.writing, "write_part while another write_part runs"
        self.writing = True
        try:
            if self.storage.part_gate is not None:
                self.storage.parts_waiting += 1
                await self.storage.part_gate.wait()
            if (
                self.storage.fail_after_parts is not None
                and len(self.parts) >= self.storage.fail_after_parts
            ):
                raise StorageUnavailable()
            self.parts.append(data)
            self.storage.max_part_bytes = max(self.storage.max_part_bytes, len(data))
        finally:
            self.writing = False

    async def finish(self, last: Sequence[bytes]) -> None:
        assert not self.finished
        assert not self.aborted
        assert not self.writing, "finish while a write_part runs"
        self.parts.append(b"".join(last))
        self.storage.objects[(self.bucket, self.key)] = b"".join(self.parts)
        self.finished = True

    async def abort(self) -> None:
        assert not self.writing, "abort while a write_part runs"
        self.aborted = True
        self.storage.objects.pop((self.bucket, self.key), None)


@dataclass
class FakeReader:
    """ports.ObjectReader over bytes in memory; `closed` once closed (exactly once)."""

    data: bytes
    offset: int = 0
    closed: bool = False

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    async def read(self, max_bytes: int) -> bytes:
        assert not self.closed, "read after close"
        piece = self.data[self.offset : self.offset + max_bytes]
        self.offset += len(piece)
        return piece

    async def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True


@dataclass
class FakeStorage:
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    modified: dict[tuple[str, str], datetime] = field(default_factory=dict)
    writers: list[FakeWriter] = field(default_factory=list)
    fail_after_parts: int | None = None
    max_part_bytes: int = 0
    # When set, every write_part waits for it (counted in parts_waiting): a slow store.
    part_gate: asyncio.Event | None = None
    parts_waiting: int = 0
    list_calls: list[tuple[str, str]] = field(default_factory=list)  # (bucket, start_after)
    readers: list[FakeReader] = field(default_factory=list)

    async def ensure_bucket(self, bucket: str) -> None:
        return None

    def open_writer(self, bucket: str, key: str, content_type: str) -> FakeWriter:
        writer = FakeWriter(self, bucket, key)
        self.writers.append(writer)
        return writer

    async def delete(self, bucket: str, key: str) -> None:
        self.objects.pop((bucket, key), None)

    async def stat(self, bucket: str, key: str) -> StoredObject | None:
        data = self.objects.get((bucket, key))
        if data is None:
            return None
        return StoredObject(
            key=key, size_bytes=len(data), last_modified=self.modified.get((bucket, key), NOW)
        )

    async def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes | None:
        data = self.objects.get((bucket, key))
        if data is not None and len(data) > max_bytes:
            raise ObjectTooLarge(len(data))
        return data

    async def open_reader(self, bucket: str, key: str) -> FakeReader | None:
        data = self.objects.get((bucket, key))
        if data is None:
            return None
        reader = FakeReader(data)
        self.readers.append(reader)
        return reader

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        keys = [k for k in self.objects if k[0] == bucket and k[1].startswith(prefix)]
        for k in keys:
            del self.objects[k]
        return len(keys)

    async def list_page(
        self, bucket: str, prefix: str, *, start_after: str, limit: int
    ) -> list[StoredObject]:
        assert 1 <= limit <= 1000
        self.list_calls.append((bucket, start_after))
        keys = sorted(
            k for b, k in self.objects if b == bucket and k.startswith(prefix) and k > start_after
        )
        return [s for s in [await self.stat(bucket, k) for k in keys[:limit]] if s is not None]

    async def ping(self) -> None:
        return None


@dataclass
class FakeOutbox:
    """ports.Outbox in memory: `events` stands for both documents of each event (the outbox
    message and the status record); `status_records()` reads the same events."""

    events: dict[str, OutboxEvent] = field(default_factory=dict)
    down: bool = False

    def status_records(self) -> FakeStatusRecords:
        """The status read model over these events (ports.StatusRecords)."""
        return FakeStatusRecords(self.events)

    async def ensure_indexes(self) -> None:
        return None

    async def add(self, event: OutboxEvent) -> None:
        if self.down:
            raise DatabaseUnavailable()
        key = _dedup(event)
        for existing in self.events.values():
            if _dedup(existing) == key:
                raise DuplicateIdempotencyKey(existing)
        self.events[event.event_id] = event

    async def get(self, event_id: str) -> OutboxEvent | None:
        return self.events.get(event_id)

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> OutboxEvent | None:
        if self.down:
            raise DatabaseUnavailable()
        if not key:
            return None
        return next(
            (e for e in self.events.values() if e.idempotency_key == key and e.owner == owner),
            None,
        )

    async def videos_with_events(self, video_ids: Sequence[str]) -> set[str]:
        if self.down:
            raise DatabaseUnavailable()
        return {e.video_id for e in self.events.values()} & set(video_ids)

    async def delete_all(self) -> int:
        count = len(self.events)
        self.events.clear()
        return count

    async def ping(self) -> None:
        if self.down:
            raise DatabaseUnavailable()


def _dedup(event: OutboxEvent) -> str:
    """The stored dedup key, as the real outbox makes it (outbox/document.py)."""
    return dedup_key(event.idempotency_key, owner=event.owner) or event.event_id


@dataclass
class FakeStatusRecords:
    """ports.StatusRecords in memory, over the events of a FakeOutbox (shared, not copied)."""

    events: dict[str, OutboxEvent] = field(default_factory=dict)
    emptied_times: int = 0

    async def ensure_indexes(self) -> None:
        return None

    async def owns_video(self, video_id: str, owner: str) -> bool:
        return any(e.video_id == video_id and e.owner == owner for e in self.events.values())

    def _listed(self, status: EventStatus | None, owner: str | None) -> list[OutboxEvent]:
        return sorted(
            (
                e
                for e in self.events.values()
                if (status is None or e.api_status is status) and owner in (None, e.owner)
            ),
            key=_position,
            reverse=True,
        )

    async def count(self, *, status: EventStatus | None, owner: str | None) -> int:
        return len(self._listed(status, owner))

    def emptied(self) -> None:
        self.emptied_times += 1

    async def scan(
        self, *, status: EventStatus | None, owner: str | None, after: str, limit: int
    ) -> AsyncGenerator[OutboxEvent, None]:
        events = self._listed(status, owner)
        if after:
            cursor = _decode_cursor(after)
            events = [e for e in events if _position(e) < cursor]
        for event in events[:limit]:
            yield event

    def cursor_of(self, event: OutboxEvent) -> str:
        created_at, event_id = _position(event)
        return f"{created_at.isoformat()}|{event_id}"

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        changed = sorted(
            (e for e in self.events.values() if e.updated_at >= since), key=lambda e: e.updated_at
        )
        return changed[:limit]

    async def mark_ready(self, event_id: str, at: datetime, *, error: str = "") -> bool:
        event = self.events.get(event_id)
        if event is None or event.ready_at is not None:
            return False
        self.events[event_id] = replace(
            event, ready_at=at, updated_at=at, error=error or event.error
        )
        return True

    async def unready(self, *, limit: int) -> list[OutboxEvent]:
        waiting = [e for e in self.events.values() if e.ready_at is None]
        return sorted(waiting, key=lambda e: e.created_at, reverse=True)[:limit]


def _position(event: OutboxEvent) -> tuple[datetime, str]:
    """Where an event stands in a listing (newest first: descending)."""
    return (event.created_at, event.event_id)


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    created_at, separator, event_id = cursor.partition("|")
    try:
        if not separator:
            raise ValueError(cursor)
        return datetime.fromisoformat(created_at), event_id
    except ValueError:
        raise InvalidPageToken() from None


@dataclass
class FakeRateLimit:
    """Admits `allowed` uploads per client, then tells them to wait `retry_after_s`."""

    allowed: int
    retry_after_s: float = 12.5
    admitted: dict[str, int] = field(default_factory=dict)

    async def admit(self, client: str) -> float | None:
        if self.admitted.get(client, 0) >= self.allowed:
            return self.retry_after_s
        self.admitted[client] = self.admitted.get(client, 0) + 1
        return None


def status_service(
    storage: FakeStorage,
    outbox: FakeOutbox,
    *,
    records: FakeStatusRecords | None = None,
    result_max_bytes: int = 1000,
    admin_token: str = "",
    clock: Callable[[], datetime] | None = None,
    result_key_template: str = "output/{video_id}.json",
    on_changed: Callable[[OutboxEvent], None] | None = None,
) -> StatusService:
    """The status service over the fakes (the status records: `outbox`'s unless `records` is
    given): one allowed bucket, `videos` (the default), results at `result_key_template`;
    the real clock unless `clock` is given; `on_changed` told of each event it marks."""
    settings = StatusSettings(
        default_bucket="videos",
        allowed_buckets=frozenset({"videos"}),
        result_key_template=result_key_template,
        result_max_bytes=result_max_bytes,
        admin_token=admin_token,
    )
    records = outbox.status_records() if records is None else records
    return StatusService(
        storage=storage,
        outbox=outbox,
        records=records,
        settings=settings,
        on_changed=on_changed,
        clock=clock if clock is not None else lambda: datetime.now(UTC),
    )


# --- The relay's ports -------------------------------------------------------------------------


@dataclass
class FakeClock:
    now: datetime = T0
    mono: float = 1000.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


@dataclass
class FakeLeaseStore:
    """In-memory leases: `insert_lease` is the only claim, unique by (shard, epoch)."""

    leases: dict[tuple[int, int], Lease] = field(default_factory=dict)
    heartbeats: dict[str, datetime] = field(default_factory=dict)

    async def ensure_indexes(self) -> None:
        return None

    async def latest(self, shards: object) -> dict[int, Lease]:
        wanted = set(shards)  # type: ignore[call-overload]
        newest: dict[int, Lease] = {}
        for (shard, epoch), lease in self.leases.items():
            if shard in wanted and (shard not in newest or epoch > newest[shard].epoch):
                newest[shard] = lease
        return newest

    async def insert_lease(self, lease: Lease) -> bool:
        key = (lease.shard, lease.epoch)
        if key in self.leases:
            return False
        self.leases[key] = lease
        return True

    async def renew(self, leases: Sequence[Lease], expires_at: datetime) -> None:
        for lease in leases:
            key = (lease.shard, lease.epoch)
            if key in self.leases:
                self.leases[key] = replace(self.leases[key], expires_at=expires_at)

    async def release(self, lease: Lease, now: datetime) -> None:
        key = (lease.shard, lease.epoch)
        if key in self.leases:
            self.leases[key] = replace(self.leases[key], released=True, expires_at=now)

    async def prune(self, shard: int, below_epoch: int) -> None:
        for key in [k for k in self.leases if k[0] == shard and k[1] < below_epoch]:
            del self.leases[key]

    async def heartbeat(self, member: str, expires_at: datetime) -> None:
        self.heartbeats[member] = expires_at

    async def members(self, alive_at: datetime) -> list[str]:
        return [m for m, t in self.heartbeats.items() if t > alive_at]

    async def leave(self, member: str) -> None:
        self.heartbeats.pop(member, None)


@dataclass
class StoredMessage:
    """One outbox message as FakeRelayStore keeps it."""

    event: PendingEvent
    status: str = "new"
    attempts: int = 0
    next_attempt_at: datetime = T0
    sent_at: datetime | None = None
    error: str = ""


@dataclass
class FakeRelayStore:
    """The relay's view of the outbox, in memory. Each call first raises the next exception
    of `errors`, if any is left, to play an unreachable or misbehaving database."""

    messages: dict[str, StoredMessage] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    calls: int = 0
    sent: asyncio.Event = field(default_factory=asyncio.Event)  # set by every mark_sent

    def add(
        self, event_id: str, *, created_at: datetime = T0, traceparent: str = "", **payload: object
    ) -> None:
        base: dict[str, object] = {
            "bucket": "videos",
            "object_key": f"input/{event_id}.mp4",
            "size_bytes": 5,
            "sha256": "",
        }
        event = PendingEvent(
            event_id=event_id,
            video_id=event_id,
            payload={**base, **payload},
            created_at=created_at,
            slot=relay_slot(event_id),
            traceparent=traceparent,
        )
        self.messages[event_id] = StoredMessage(event, next_attempt_at=created_at)

    def status_of(self, event_id: str) -> str:
        return self.messages[event_id].status

    def _call(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    async def ensure_indexes(self) -> None:
        return None

    async def due(
        self, slot_ranges: Sequence[tuple[int, int]], now: datetime, limit: int
    ) -> list[PendingEvent]:
        self._call()
        due = [
            m
            for m in self.messages.values()
            if m.status == "new"
            and m.next_attempt_at <= now
            and any(low <= (m.event.slot or 0) < high for low, high in slot_ranges)
        ]
        due.sort(key=lambda m: m.next_attempt_at)
        return [m.event for m in due[:limit]]

    async def mark_sent(self, event_ids: Sequence[str], now: datetime) -> None:
        self._call()
        for event_id in event_ids:
            message = self.messages[event_id]
            if message.status == "new":
                message.status, message.sent_at = "sent", now
                message.attempts += 1
        self.sent.set()

    async def reschedule(
        self, event_ids: Sequence[str], next_attempt_at: datetime, now: datetime
    ) -> None:
        self._call()
        for event_id in event_ids:
            message = self.messages[event_id]
            if message.status == "new":
                message.next_attempt_at = next_attempt_at
                message.attempts += 1

    async def mark_failed(self, event_id: str, reason: str, now: datetime) -> None:
        self._call()
        message = self.messages[event_id]
        if message.status == "new":
            message.status, message.error = "failed", reason
            message.attempts += 1

    async def backfill_slots(self, limit: int) -> int:
        return 0

    async def oldest_unsent_created_at(self) -> datetime | None:
        waiting = [m.event.created_at for m in self.messages.values() if m.status == "new"]
        return min(waiting, default=None)

    async def sweep_sent(self, sent_before: datetime, limit: int) -> int:
        old = [
            k
            for k, m in self.messages.items()
            if m.status == "sent" and m.sent_at is not None and m.sent_at < sent_before
        ][:limit]
        for key in old:
            del self.messages[key]
        return len(old)


@dataclass
class FakePublisher:
    """Records what it is asked to publish. `unavailable` makes every publish raise
    PublisherUnavailable; `reject` lists event ids Kafka refuses for good; `retry` those
    that fail transiently."""

    published: list[Message] = field(default_factory=list)
    unavailable: bool = False
    reject: set[str] = field(default_factory=set)
    retry: set[str] = field(default_factory=set)
    closed: bool = False
    restarts: int = 0

    async def start(self) -> None:
        return None

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        if self.unavailable:
            raise PublisherUnavailable("no broker")
        deliveries = []
        for message in messages:
            key = message.key.decode()
            if key in self.reject:
                deliveries.append(
                    PublishResult(PublishOutcome.REJECTED, "MessageSizeTooLargeError")
                )
            elif key in self.retry:
                deliveries.append(PublishResult(PublishOutcome.RETRY, "NotEnoughReplicas"))
            else:
                self.published.append(message)
                deliveries.append(PublishResult(PublishOutcome.DELIVERED))
        return deliveries

    def published_ids(self) -> list[str]:
        return [m.key.decode() for m in self.published]

    async def close(self) -> None:
        self.closed = True


def ids(prefix: str, count: int) -> Iterable[str]:
    """`count` distinct event ids."""
    return (f"{prefix}-{i:04d}" for i in range(count))


@dataclass
class FakeUploadSessions:
    """In-memory UploadSessionStore: every fact inserted once under its key, as the adapter."""

    sessions: dict[str, Any] = field(default_factory=dict)
    multipart: dict[str, str] = field(default_factory=dict)
    commits: dict[tuple[str, int], Any] = field(default_factory=dict)
    ends: dict[str, Any] = field(default_factory=dict)
    leases: dict[tuple[str, int], Any] = field(default_factory=dict)
    asks: set[tuple[str, int]] = field(default_factory=set)

    async def ensure_indexes(self) -> None:
        return None

    async def create(self, session: Any) -> None:
        self.sessions[session.upload_id] = session

    async def get(self, upload_id: str) -> Any:
        return self.sessions.get(upload_id)

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> Any:
        found = [s for s in self.sessions.values() if (s.idempotency_key, s.owner) == (key, owner)]
        return found[0] if found else None

    async def open_sessions(self, client: str, now: datetime) -> int:
        return sum(
            1
            for s in self.sessions.values()
            if s.client == client and s.expires_at > now and s.upload_id not in self.ends
        )

    async def record_multipart(self, upload_id: str, multipart_id: str) -> str:
        return self.multipart.setdefault(upload_id, multipart_id)

    async def multipart_of(self, upload_id: str) -> str | None:
        return self.multipart.get(upload_id)

    async def commit_part(self, upload_id: str, part: Any) -> Any:
        return self.commits.setdefault((upload_id, part.number), part)

    async def parts(self, upload_id: str) -> list[Any]:
        return [p for (u, _), p in sorted(self.commits.items()) if u == upload_id]

    async def end(self, upload_id: str, end: Any, at: datetime) -> Any:
        return self.ends.setdefault(upload_id, end)

    async def ending(self, upload_id: str) -> Any:
        return self.ends.get(upload_id)

    async def latest_lease(self, upload_id: str) -> Any:
        mine = [(e, lease) for (u, e), lease in self.leases.items() if u == upload_id]
        return max(mine, key=lambda pair: pair[0])[1] if mine else None

    async def take_lease(self, lease: Any) -> bool:
        key = (lease.upload_id, lease.epoch)
        if key in self.leases:
            return False
        self.leases[key] = lease
        return True

    async def renew_lease(self, lease: Any, expires_at: datetime) -> None:
        key = (lease.upload_id, lease.epoch)
        self.leases[key] = replace(self.leases[key], expires_at=expires_at)

    async def release_lease(self, lease: Any) -> None:
        key = (lease.upload_id, lease.epoch)
        self.leases[key] = replace(self.leases[key], released=True)

    async def ask_release(self, upload_id: str, epoch: int, by: str) -> None:
        self.asks.add((upload_id, epoch))

    async def release_asked(self, upload_id: str, epoch: int) -> bool:
        return (upload_id, epoch) in self.asks

    async def expired(self, now: datetime, *, limit: int) -> list[Any]:
        return [s for s in self.sessions.values() if s.expires_at < now][:limit]

    async def open_multipart_ids(self, multipart_ids: Sequence[str]) -> set[str]:
        return {m for u, m in self.multipart.items() if u in self.sessions} & set(multipart_ids)

    async def videos_with_sessions(self, video_ids: Sequence[str]) -> set[str]:
        return {s.video_id for s in self.sessions.values()} & set(video_ids)

    async def delete_all(self) -> int:
        count = len(self.sessions)
        for collection in (self.sessions, self.multipart, self.commits, self.ends, self.leases):
            collection.clear()
        self.asks.clear()
        return count

    async def delete(self, upload_id: str) -> None:
        self.sessions.pop(upload_id, None)
        self.multipart.pop(upload_id, None)
        self.ends.pop(upload_id, None)
        for key in [k for k in self.commits if k[0] == upload_id]:
            del self.commits[key]
