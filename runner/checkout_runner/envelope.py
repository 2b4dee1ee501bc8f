"""The relay's Kafka record (docs/relay.md): key = event id, a versioned JSON envelope, the
event id, type and W3C `traceparent` in headers."""

from __future__ import annotations

import json
from datetime import datetime

from .domain import ConsumedRecord, VideoEvent
from .errors import EnvelopeError

ENVELOPE_VERSION = 1
EVENT_TYPE = "checkout.video.uploaded"


def parse(delivery: ConsumedRecord) -> VideoEvent:
    """The event of a record; EnvelopeError for anything else (another version or type, not
    JSON, a field missing)."""
    try:
        value = json.loads(delivery.value)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("not JSON") from None
    if not isinstance(value, dict):
        raise EnvelopeError("not a JSON object")
    if value.get("version") != ENVELOPE_VERSION or value.get("type") != EVENT_TYPE:
        raise EnvelopeError(f"version {value.get('version')!r}, type {value.get('type')!r}")
    try:
        return VideoEvent(
            event_id=_text(value, "event_id"),
            video_id=_text(value, "video_id"),
            bucket=_text(value, "bucket"),
            object_key=_text(value, "object_key"),
            size_bytes=int(value.get("size_bytes") or 0),
            created_at=datetime.fromisoformat(_text(value, "created_at")),
            traceparent=delivery.header("traceparent"),
        )
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(str(exc)) from None


def _text(value: dict[str, object], name: str) -> str:
    found = value.get(name)
    if not isinstance(found, str) or not found:
        raise ValueError(f"{name} missing")
    return found
