"""In-memory fakes of the ports, for fast unit tests only (integration tests use real servers)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from checkout_server.domain import EventStatus, OutboxEvent, Page, StoredObject
from checkout_server.errors import DatabaseUnavailable, StorageUnavailable
from checkout_server.ports import DuplicateIdempotencyKey, ObjectTooLarge

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeWriter:
    storage: FakeStorage
    bucket: str
    key: str
    parts: list[bytes] = field(default_factory=list)
    finished: bool = False
    aborted: bool = False

    async def write_part(self, data: bytes) -> None:
        assert not self.finished
        assert not self.aborted
        if (
            self.storage.fail_after_parts is not None
            and len(self.parts) >= self.storage.fail_after_parts
        ):
            raise StorageUnavailable()
        self.parts.append(data)
        self.storage.max_part_bytes = max(self.storage.max_part_bytes, len(data))

    async def finish(self, last: bytes) -> None:
        assert not self.finished
        assert not self.aborted
        self.parts.append(last)
        self.storage.objects[(self.bucket, self.key)] = b"".join(self.parts)
        self.finished = True

    async def abort(self) -> None:
        self.aborted = True
        self.storage.objects.pop((self.bucket, self.key), None)


@dataclass
class FakeStorage:
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    modified: dict[tuple[str, str], datetime] = field(default_factory=dict)
    writers: list[FakeWriter] = field(default_factory=list)
    fail_after_parts: int | None = None
    max_part_bytes: int = 0

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

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        keys = [k for k in self.objects if k[0] == bucket and k[1].startswith(prefix)]
        for k in keys:
            del self.objects[k]
        return len(keys)

    async def ping(self) -> None:
        return None


@dataclass
class FakeOutbox:
    events: dict[str, OutboxEvent] = field(default_factory=dict)
    down: bool = False

    async def ensure_indexes(self) -> None:
        return None

    async def add(self, event: OutboxEvent) -> None:
        if self.down:
            raise DatabaseUnavailable()
        key = event.idempotency_key or event.event_id
        for existing in self.events.values():
            if (existing.idempotency_key or existing.event_id) == key:
                raise DuplicateIdempotencyKey(existing)
        self.events[event.event_id] = event

    async def get(self, event_id: str) -> OutboxEvent | None:
        return self.events.get(event_id)

    async def find_by_idempotency_key(self, key: str) -> OutboxEvent | None:
        if self.down:
            raise DatabaseUnavailable()
        return next((e for e in self.events.values() if e.idempotency_key == key), None)

    async def list_page(self, *, status: EventStatus | None, cursor: str, limit: int) -> Page:
        events = sorted(
            (e for e in self.events.values() if status is None or e.api_status is status),
            key=lambda e: (e.created_at, e.event_id),
            reverse=True,
        )
        start = int(cursor) if cursor else 0
        page = events[start : start + limit]
        more = start + limit < len(events)
        return Page(events=page, total=len(events), next_cursor=str(start + limit) if more else "")

    async def changed_since(self, since: datetime, *, limit: int) -> list[OutboxEvent]:
        changed = sorted(
            (e for e in self.events.values() if e.updated_at >= since), key=lambda e: e.updated_at
        )
        return changed[:limit]

    async def mark_ready(self, event_id: str, at: datetime) -> bool:
        event = self.events.get(event_id)
        if event is None or event.ready_at is not None:
            return False
        self.events[event_id] = replace(event, ready_at=at, updated_at=at)
        return True

    async def unready(self, *, limit: int) -> list[OutboxEvent]:
        return [e for e in self.events.values() if e.ready_at is None][:limit]

    async def delete_all(self) -> int:
        count = len(self.events)
        self.events.clear()
        return count

    async def ping(self) -> None:
        if self.down:
            raise DatabaseUnavailable()
