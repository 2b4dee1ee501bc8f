"""What the SDK returns: small frozen dataclasses decoupled from the generated messages, so
callers get plain Python types (datetimes, dicts) and a stable `to_dict()` for JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from checkout_api.checkout.v1 import checkout_pb2 as pb

TERMINAL_STATUSES = frozenset({"ready", "failed"})
"""Statuses after which an event never changes again."""


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class _Model:
    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (datetimes as ISO 8601 strings)."""
        return {
            field.name: _jsonable(getattr(self, field.name))
            for field in dataclasses.fields(self)  # type: ignore[arg-type]
        }


@dataclass(frozen=True)
class UploadProgress(_Model):
    """Reported to `on_progress` after each chunk is handed to gRPC.

    `sent_bytes` counts from 0 again when a retry starts (`attempt` > 1); `total_bytes` is
    None for a stream of unknown size. For a resumable upload `sent_bytes` is the position in
    the file, `resumed_from_bytes` where this attempt began (the server's persisted_size;
    0 for a fresh start) and `upload_id` the session."""

    sent_bytes: int
    total_bytes: int | None
    attempt: int
    resumed_from_bytes: int = 0
    upload_id: str = ""


@dataclass(frozen=True)
class Upload(_Model):
    """A stored video and its event (`event_id == video_id`). `deduplicated` is True when the
    server replayed an earlier upload with the same idempotency key."""

    event_id: str
    video_id: str
    bucket: str
    object_key: str
    size_bytes: int
    sha256: str
    deduplicated: bool
    idempotency_key: str
    attempts: int
    upload_id: str = ""  # the resumable session, when the upload used one

    @classmethod
    def from_pb(
        cls,
        m: pb.UploadVideoResponse,
        *,
        idempotency_key: str,
        attempts: int,
        upload_id: str = "",
    ) -> Upload:
        return cls(
            event_id=m.event_id,
            video_id=m.video_id,
            bucket=m.bucket,
            object_key=m.object_key,
            size_bytes=m.size_bytes,
            sha256=m.sha256,
            deduplicated=m.deduplicated,
            idempotency_key=idempotency_key,
            attempts=attempts,
            upload_id=upload_id,
        )


@dataclass(frozen=True)
class Operation(_Model):
    """One event: `status` is ``new``, ``sent``, ``ready`` or ``failed``; `error` says why an
    event failed."""

    event_id: str
    status: str
    video_id: str
    bucket: str
    object_key: str
    filename: str
    size_bytes: int
    created_at: datetime | None
    updated_at: datetime | None
    error: str

    @classmethod
    def from_pb(cls, m: pb.Operation) -> Operation:
        return cls(
            event_id=m.event_id,
            status=m.status,
            video_id=m.video_id,
            bucket=m.bucket,
            object_key=m.object_key,
            filename=m.filename,
            size_bytes=m.size_bytes,
            created_at=_time(m, "created_at"),
            updated_at=_time(m, "updated_at"),
            error=m.error,
        )


@dataclass(frozen=True)
class StatusUpdate(_Model):
    """One observation of an event's status, as `watch` yields them."""

    event_id: str
    status: str
    video_id: str
    updated_at: datetime | None
    error: str

    @property
    def terminal(self) -> bool:
        """True for ``ready`` and ``failed``: no update follows."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_pb(cls, m: pb.StatusUpdate) -> StatusUpdate:
        return cls(
            event_id=m.event_id,
            status=m.status,
            video_id=m.video_id,
            updated_at=_time(m, "updated_at"),
            error=m.error,
        )


@dataclass(frozen=True)
class Result(_Model):
    """The detection result of an event. `prediction` is the runner's JSON as a dict once the
    status is ``ready``, else None. A protobuf Struct holds every number as a double; the
    whole ones come back as ints, as a JSON reader of the same result over REST gets them
    (``{"index": 10}``, not ``10.0``)."""

    event_id: str
    video_id: str
    status: str
    prediction: dict[str, Any] | None

    @classmethod
    def from_pb(cls, m: pb.GetResultResponse) -> Result:
        prediction = (
            _whole_numbers(json_format.MessageToDict(m.prediction))
            if m.HasField("prediction")
            else None
        )
        return cls(event_id=m.event_id, video_id=m.video_id, status=m.status, prediction=prediction)


@dataclass(frozen=True)
class Request(_Model):
    """A new event for an already stored video (re-processing)."""

    event_id: str
    video_id: str


@dataclass(frozen=True)
class CleanupReport(_Model):
    """What Cleanup removed."""

    deleted_objects: int
    deleted_events: int


@dataclass(frozen=True)
class Health(_Model):
    """`status` is ``ok`` when every dependency answers, else ``degraded``; `dependencies`
    maps a dependency name to ``ok`` or a short reason."""

    status: str
    dependencies: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_EXACT_INT = 2**53  # beyond it a double no longer holds every whole number


def _whole_numbers(value: Any) -> Any:
    """`value` (a Struct's JSON) with each whole double within ±2**53 made an int."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INT:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value
