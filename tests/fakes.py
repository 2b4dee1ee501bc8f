"""In-memory fakes of the ports, for fast unit tests only (integration tests use real servers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from checkout_server.domain import OutboxEvent
from checkout_server.errors import DatabaseUnavailable, StorageUnavailable
from checkout_server.ports import DuplicateIdempotencyKey


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

    async def exists(self, bucket: str, key: str) -> bool:
        return (bucket, key) in self.objects

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

    async def ping(self) -> None:
        if self.down:
            raise DatabaseUnavailable()
