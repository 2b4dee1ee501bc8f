"""Domain values shared by the servicer, the upload pipeline and the adapters."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from checkout_common.input_key import input_key


class EventStatus(enum.StrEnum):
    """Outbox status as stored and as sent to clients (lowercase strings, as in the seed)."""

    NEW = "new"  # stored, waiting for the relay
    SENT = "sent"  # published to Kafka
    READY = "ready"  # the detection result exists in object storage
    # Publishing failed for good, or the runner's result says the video cannot be processed
    # (a failure result); `error` says why.
    FAILED = "failed"


VIDEO_CONTENT_TYPE = "video/mp4"


def input_object_key(video_id: str) -> str:
    """Where a video is stored in its bucket (checkout_common.input_key: the runner reads
    this key and no other for an event)."""
    return input_key(video_id)


@dataclass(frozen=True, kw_only=True)
class UploadRequest:
    """What a client declared before streaming the bytes (validated by the pipeline)."""

    filename: str = ""
    content_type: str = ""
    bucket: str = ""
    size_bytes: int = 0  # 0 = unknown
    sha256: str = ""  # lowercase hex or empty
    idempotency_key: str = ""
    # The authenticated client that uploads ("" with authentication off).
    owner: str = ""


@dataclass(frozen=True, kw_only=True)
class StoredVideo:
    """A complete object in storage."""

    video_id: str
    bucket: str
    object_key: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class OutboxEvent:
    """One outbox document: the promise that the video will be announced on Kafka."""

    event_id: str
    video_id: str
    bucket: str
    object_key: str
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    status: EventStatus
    created_at: datetime
    updated_at: datetime
    # The client's idempotency key, if it sent one.
    idempotency_key: str = ""
    # Why the event failed: the relay's reason, or `REASON: message` of a failure result.
    error: str = ""
    # When the detection result (or a failure result) was first seen in object storage.
    ready_at: datetime | None = None
    # The W3C `traceparent` of the request that made the event ("" if none): the relay's
    # publish span continues that trace.
    traceparent: str = ""
    # The authenticated client that made the event ("" when authentication was off).
    owner: str = ""

    @classmethod
    def new(
        cls,
        *,
        event_id: str,
        video_id: str,
        bucket: str,
        object_key: str,
        size_bytes: int,
        now: datetime,
        filename: str = "",
        sha256: str = "",
        idempotency_key: str = "",
        traceparent: str = "",
        owner: str = "",
    ) -> OutboxEvent:
        """The `new` event of a stored video, as every writer of the outbox makes it: an
        upload (`event_id` = `video_id`: one event per uploaded video, however often its
        commit is retried) and a re-request (a fresh `event_id`)."""
        return cls(
            event_id=event_id,
            video_id=video_id,
            bucket=bucket,
            object_key=object_key,
            filename=filename,
            content_type=VIDEO_CONTENT_TYPE,
            size_bytes=size_bytes,
            sha256=sha256,
            status=EventStatus.NEW,
            created_at=now,
            updated_at=now,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
            owner=owner,
        )

    @property
    def api_status(self) -> EventStatus:
        """What clients see: once a result exists `ready`, or `failed` when it is a failure
        result (its reason is in `error`); before that the outbox status."""
        if self.ready_at is not None:
            return EventStatus.FAILED if self.error else EventStatus.READY
        return self.status


class Role(enum.StrEnum):
    """What an authenticated client may do (API keys file, `role`)."""

    UPLOADER = "uploader"  # upload; its own events' statuses and results; re-request its videos
    READER = "reader"  # every event's status and result
    ADMIN = "admin"  # everything, Cleanup included


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who makes a call: an authenticated client and its role, or ANONYMOUS when
    authentication is off (everything is allowed but Cleanup, which ADMIN_TOKEN guards)."""

    client: str
    role: Role | None  # None: authentication is off

    @property
    def authenticated(self) -> bool:
        return self.role is not None

    @property
    def owner_filter(self) -> str | None:
        """The owner whose events this caller sees, or None when it sees every event."""
        return self.client if self.role is Role.UPLOADER else None

    def may_see(self, event: OutboxEvent) -> bool:
        owner = self.owner_filter
        return owner is None or event.owner == owner


ANONYMOUS = Principal(client="", role=None)


def age_s(since: datetime | None, now: datetime) -> float:
    """Seconds from `since` to `now`, to the millisecond; 0 for None (nothing waits) or a
    time after `now` (clock skew between writers)."""
    if since is None:
        return 0.0
    return round(max((now - since).total_seconds(), 0.0), 3)


@dataclass(frozen=True, kw_only=True)
class StoredObject:
    """What storage says about one object."""

    key: str
    size_bytes: int
    last_modified: datetime


@dataclass(frozen=True, kw_only=True)
class UploadResult:
    event: OutboxEvent
    # True when the result replays an earlier upload with the same idempotency key.
    deduplicated: bool = False
