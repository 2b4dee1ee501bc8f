"""Statuses, results, re-requests and cleanup: what clients ask about events.

The API status of an event is `ready` once its detection result exists in object storage,
else the outbox status (`new`, `sent`, `failed`). Once a result is seen it is recorded in the
event's status record (`ready_at`), so listings never ask storage once per event. A failure
result (`"status": "failed"`, the result contract in docs/status.md) makes the event `failed`
instead, its `error` the result's reason and message: it is read once, when the result is
first seen.

A result counts for an event only if it was written after the event was created (with a
margin for clock skew): a re-request of a video that already has a result is not `ready`
until the runner writes a new one.

Every read takes the caller (`Principal`): an uploader sees only the events its client made,
and another client's event is "not found" to it, exactly as a missing one (its existence is
not revealed). Readers and admins, and every caller when authentication is off, see all.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from checkout_common.result_key import result_key, result_prefix

from .. import errors
from ..domain import (
    EventStatus,
    OutboxEvent,
    Principal,
    Role,
    input_object_key,
)
from ..errors import ObjectTooLarge
from ..ports import (
    ObjectReader,
    ObjectStorage,
    Outbox,
    PageEnd,
    StatusRecords,
    UploadSessionStore,
)
from ..rules import bucket_of

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100  # with a page token but no page size
MAX_PAGE_SIZE = 1000
# Without page size and token (the original service's `status/all`): every event up to this
# many, then a next_page_token (docs/status.md).
LIST_ALL_MAX = 10_000
# A result written this long before its event was created still counts (clock skew between
# the runner's storage writes and this server).
RESULT_CLOCK_SKEW = timedelta(seconds=5)
# A result whose FAILURE_FIELD is FAILURE_VALUE is a failure result: the video could not be
# processed, and `error` ({"reason", "message"}) says why (docs/status.md, the result contract).
FAILURE_FIELD, FAILURE_VALUE = "status", "failed"
FAILURE_TEXT_MAX = 500  # characters of `REASON: message` kept in the status record


@dataclass(frozen=True, kw_only=True)
class StatusSettings:
    default_bucket: str
    allowed_buckets: frozenset[str]
    result_key_template: str
    result_max_bytes: int
    admin_token: str


@dataclass(frozen=True, kw_only=True)
class Result:
    event: OutboxEvent
    prediction: dict[str, Any] | None  # None until ready


@dataclass(frozen=True, kw_only=True)
class Listing:
    """What a listing shows: `total` matching events (None: too many records to count), and
    `events` newest first, streamed from the database: at most `limit + 1`, where the one
    beyond `limit` only tells that another page follows (its token: `cursor_of` the last
    event shown). `events` may end early with a PageEnd, whose cursor is the next page's
    token. Close `events` when done."""

    total: int | None
    limit: int
    events: AsyncGenerator[OutboxEvent | PageEnd, None]
    cursor_of: Callable[[OutboxEvent], str]


@dataclass(frozen=True, kw_only=True)
class CleanupReport:
    deleted_objects: int
    deleted_events: int


def parse_uuid(value: str, error: type[errors.ServiceError]) -> str:
    """The canonical form of a UUID given by a client, or `error`."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise error(value[:64]) from None


def parse_status(value: str) -> EventStatus | None:
    if not value:
        return None
    try:
        return EventStatus(value.lower())
    except ValueError:
        raise errors.InvalidStatusFilter(value[:32]) from None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class StatusService:
    def __init__(
        self,
        *,
        storage: ObjectStorage,
        outbox: Outbox,
        records: StatusRecords,
        settings: StatusSettings,
        sessions: UploadSessionStore | None = None,
        clock: Callable[[], datetime] = _utcnow,
        traceparent: Callable[[], str] = lambda: "",
        on_changed: Callable[[OutboxEvent], None] | None = None,
    ) -> None:
        """`outbox` finds events and takes re-requests, `records` lists, counts and marks
        them. `traceparent` returns the W3C trace context of the current request ("" if
        none), stored with a re-request's event (as with an upload's). `sessions`: the
        resumable upload sessions, which Cleanup removes too. `on_changed` gets each event
        this service finds ready, just before it marks it (to reach this process's watchers
        and the status topic at once; another server may find it too); it may neither block
        nor raise."""
        self._sessions = sessions
        self._storage = storage
        self._outbox = outbox
        self._records = records
        self._settings = settings
        self._clock = clock
        self._traceparent = traceparent
        self._on_changed = on_changed

    def result_key(self, event: OutboxEvent) -> str:
        return result_key(
            self._settings.result_key_template, video_id=event.video_id, event_id=event.event_id
        )

    async def get(
        self,
        event_id: str,
        viewer: Principal,
        *,
        may_check: Callable[[], Awaitable[bool]] | None = None,
    ) -> OutboxEvent:
        """The event with its API status, checking storage for a result not yet recorded;
        `may_check`, when given, is asked first (the caller's budget of checks), and when it
        says no the event is answered as recorded."""
        event = await self._visible(event_id, viewer)
        if event.ready_at is not None or (may_check is not None and not await may_check()):
            return event
        return await self.refresh(event)

    async def _visible(self, event_id: str, viewer: Principal) -> OutboxEvent:
        """The event as recorded, if `viewer` may see it: InvalidEventId for an id that is not
        a UUID, EventNotFound for an unknown event and for one the viewer may not see (its
        existence is not revealed). Every read of one event checks through here."""
        event = await self._outbox.get(parse_uuid(event_id, errors.InvalidEventId))
        if event is None or not viewer.may_see(event):
            raise errors.EventNotFound(event_id=event_id)
        return event

    async def find(self, event_id: str) -> OutboxEvent | None:
        """The event as recorded, for the server's own use (no caller to check), or None."""
        return await self._outbox.get(event_id)

    async def refresh(self, event: OutboxEvent) -> OutboxEvent:
        """`event`, marked ready if its result has appeared in storage."""
        if event.ready_at is not None:
            return event
        found = await self._storage.stat(event.bucket, self.result_key(event))
        if found is None or found.last_modified < event.created_at - RESULT_CLOCK_SKEW:
            return event
        return await self._mark_ready(event, error=await self._failure_of(event))

    async def _failure_of(self, event: OutboxEvent) -> str:
        """`REASON: message` when the event's result is a failure result, else "". A result
        that cannot be read as JSON counts as a result here: GetResult reports what is wrong
        with it (RESULT_INVALID, RESULT_TOO_LARGE)."""
        try:
            data = await self._storage.read(
                event.bucket, self.result_key(event), max_bytes=self._settings.result_max_bytes
            )
            result = json.loads(data) if data is not None else None
        except (ObjectTooLarge, ValueError, UnicodeDecodeError):
            return ""
        if not isinstance(result, dict) or result.get(FAILURE_FIELD) != FAILURE_VALUE:
            return ""
        error = result.get("error")
        error = error if isinstance(error, dict) else {}
        reason = str(error.get("reason") or "FAILED")[:64]
        message = str(error.get("message") or "")
        text = f"{reason}: {message}" if message else reason
        return text[:FAILURE_TEXT_MAX]

    async def _mark_ready(self, event: OutboxEvent, *, error: str = "") -> OutboxEvent:
        """Record the result, after telling `on_changed`: the result's presence is what makes
        the event ready (on FerretDB the mark costs time in proportion to the collection;
        another server's mark of it may have come first, with another time)."""
        now = self._clock()
        ready = _with_ready(event, now, error=error)
        if self._on_changed is not None:
            self._on_changed(ready)
        if await self._records.mark_ready(event.event_id, now, error=error):
            if error:
                log.info("failure result", extra={"event_id": event.event_id, "error": error})
            else:
                log.info("result ready", extra={"event_id": event.event_id})
        return ready

    async def list(
        self, *, status: str, page_size: int, page_token: str, viewer: Principal
    ) -> Listing:
        """The events a listing shows, newest first. Without `page_size` and `page_token` (as
        the original service's `status/all` was called) every event, up to LIST_ALL_MAX;
        else pages of `page_size` (default DEFAULT_PAGE_SIZE, at most MAX_PAGE_SIZE)."""
        if page_size < 0:
            raise errors.InvalidPageSize()
        if page_size:
            limit = min(page_size, MAX_PAGE_SIZE)
        else:
            limit = DEFAULT_PAGE_SIZE if page_token else LIST_ALL_MAX
        wanted, owner = parse_status(status), viewer.owner_filter
        total = await self._records.count(status=wanted, owner=owner)
        return Listing(
            total=total,
            limit=limit,
            events=self._records.scan(
                status=wanted, owner=owner, after=page_token, limit=limit + 1
            ),
            cursor_of=self._records.cursor_of,
        )

    async def result(self, event_id: str, viewer: Principal, *, bucket: str = "") -> Result:
        """The event and, once ready, its detection JSON. A `bucket` other than the event's
        is EventNotInBucket (empty: the event's own)."""
        event = await self.get(event_id, viewer)
        _check_bucket(event, bucket)
        if event.ready_at is None:
            return Result(event=event, prediction=None)
        key = self.result_key(event)
        try:
            data = await self._storage.read(
                event.bucket, key, max_bytes=self._settings.result_max_bytes
            )
        except ObjectTooLarge as exc:
            raise errors.ResultTooLarge(
                f"{exc.size_bytes} байт", max_bytes=str(self._settings.result_max_bytes)
            ) from None
        if data is None:  # removed after it was seen
            raise errors.ResultInvalid("файл результата исчез", key=key)
        try:
            prediction = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise errors.ResultInvalid(key=key) from None
        if not isinstance(prediction, dict):
            raise errors.ResultInvalid(key=key)
        return Result(event=event, prediction=prediction)

    @asynccontextmanager
    async def video(
        self, event_id: str, viewer: Principal, *, bucket: str = ""
    ) -> AsyncIterator[ObjectReader]:
        """The event's stored video, open for reading for the block (closed after it). The
        event is checked exactly as for `result` (InvalidEventId, EventNotFound,
        EventNotInBucket); VideoNotFound when its object is no longer in storage."""
        event = await self._visible(event_id, viewer)
        _check_bucket(event, bucket)
        reader = await self._storage.open_reader(event.bucket, event.object_key)
        if reader is None:
            raise errors.VideoNotFound(video_id=event.video_id, bucket=event.bucket)
        try:
            yield reader
        finally:
            await reader.close()

    async def create_request(self, *, video_id: str, bucket: str, viewer: Principal) -> OutboxEvent:
        """A new `new` event for a video that is already stored (re-processing). An uploader
        may re-request only a video its client uploaded (else: not found)."""
        video_id = parse_uuid(video_id, errors.InvalidVideoId)
        bucket = bucket_of(
            bucket, default=self._settings.default_bucket, allowed=self._settings.allowed_buckets
        )
        owner = viewer.owner_filter
        if owner is not None and not await self._records.owns_video(video_id, owner):
            raise errors.VideoNotFound(video_id=video_id, bucket=bucket)
        key = input_object_key(video_id)
        found = await self._storage.stat(bucket, key)
        if found is None:
            raise errors.VideoNotFound(video_id=video_id, bucket=bucket)
        event = OutboxEvent.new(
            event_id=str(uuid.uuid4()),
            video_id=video_id,
            bucket=bucket,
            object_key=key,
            size_bytes=found.size_bytes,
            now=self._clock(),
            traceparent=self._traceparent(),
            owner=viewer.client,
        )
        await self._outbox.add(event)
        log.info("re-processing requested", extra={"event_id": event.event_id})
        return event

    def check_admin(self, bearer: str | None) -> None:
        """With authentication off, Cleanup is refused unless `bearer` (the call's bearer
        token as api/auth read it, None without a well-formed one) is the configured admin
        token, and disabled without one."""
        expected = self._settings.admin_token
        if not expected:
            raise errors.CleanupDisabled()
        if bearer is None or not hmac.compare_digest(bearer.encode(), expected.encode()):
            raise errors.Unauthenticated("нужен токен администратора (ADMIN_TOKEN)")

    async def cleanup(self, bearer: str | None, viewer: Principal) -> CleanupReport:
        """Delete every input and output object of the allowed buckets, every event and every
        resumable upload session (a session finished before would otherwise still answer its
        idempotency key, its video gone). An authenticated caller was admitted by its role
        (only admins may call it); without authentication the ADMIN_TOKEN guards it. The
        sessions' open multipart uploads are left to the upload sweeper (unrecorded now)."""
        if not viewer.authenticated:
            self.check_admin(bearer)
        elif viewer.role is not Role.ADMIN:  # the interceptor refuses it first
            raise errors.PermissionDenied("очистку может вызвать только роль admin")
        objects = 0
        output_prefix = result_prefix(self._settings.result_key_template)
        for bucket in sorted(self._settings.allowed_buckets):
            for prefix in sorted({"input/", output_prefix}):
                objects += await self._storage.delete_prefix(bucket, prefix)
        events = await self._outbox.delete_all()
        self._records.emptied()
        sessions = 0 if self._sessions is None else await self._sessions.delete_all()
        log.warning(
            "cleanup",
            extra={
                "deleted_objects": objects,
                "deleted_events": events,
                "deleted_upload_sessions": sessions,
            },
        )
        return CleanupReport(deleted_objects=objects, deleted_events=events)


def _check_bucket(event: OutboxEvent, bucket: str) -> None:
    """EventNotInBucket when a client names a `bucket` that is not the event's (empty: the
    event's own), as the original service answered for a result that is not there."""
    if bucket and bucket != event.bucket:
        raise errors.EventNotInBucket(bucket[:64], event_id=event.event_id, bucket=bucket[:64])


def _with_ready(event: OutboxEvent, at: datetime, *, error: str = "") -> OutboxEvent:
    return replace(event, ready_at=at, updated_at=at, error=error or event.error)
