"""The Kafka message of an outbox event: key, versioned JSON envelope, headers.

Consumers deduplicate by the `event_id` header (or field): delivery is at least once.
"""

from __future__ import annotations

import json
from datetime import UTC

from ..errors import EnvelopeError
from ..outbox import document as f
from ..tracing import TRACEPARENT
from .ports import Message, PendingEvent

ENVELOPE_VERSION = 1
EVENT_TYPE = "checkout.video.uploaded"


def build_message(event: PendingEvent, traceparent: str | None = None) -> Message:
    """key = event id (so all records of a video land on one partition, in order). The
    `traceparent` header carries `traceparent` (the publish span's context) or else the one
    stored with the event; none without either."""
    payload = event.payload
    try:
        value = {
            "version": ENVELOPE_VERSION,
            "event_id": event.event_id,
            "type": EVENT_TYPE,
            "video_id": event.video_id,
            "bucket": str(payload[f.BUCKET]),
            "object_key": str(payload[f.OBJECT_KEY]),
            "size_bytes": int(payload[f.SIZE_BYTES]),
            "sha256": str(payload.get(f.SHA256) or ""),
            "created_at": event.created_at.astimezone(UTC).isoformat(timespec="milliseconds"),
        }
        encoded = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError(f"cannot serialise event: {type(exc).__name__}: {exc}") from exc
    headers = [
        ("event_id", event.event_id.encode()),
        ("event_type", EVENT_TYPE.encode()),
        ("envelope_version", str(ENVELOPE_VERSION).encode()),
        ("content-type", b"application/json"),
    ]
    trace_context = traceparent or event.traceparent
    if trace_context:
        headers.append((TRACEPARENT, trace_context.encode()))
    return Message(key=event.event_id.encode(), value=encoded, headers=tuple(headers))
