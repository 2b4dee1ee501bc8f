"""The relay's Kafka record (docs/relay.md; contract/video-uploaded.v1.schema.json): key =
event id, a versioned JSON envelope, the event id, type and W3C `traceparent` in headers.

Anyone who can write to the topic can send a record, so every field is checked before the
runner reads or writes anything for it (docs/runner.md, "Hostile records"): the ids are
canonical UUIDs (what the server makes), the bucket is on ALLOWED_BUCKETS, the object key is
exactly the server's key of that video id (checkout_common.input_key), and the rest is what
the schema says. Anything else is refused (EnvelopeError with its Refusal); a refusal's
message shows at most SHOWN_CHARS of any text the record carried.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from datetime import datetime

from checkout_common.input_key import input_key

from .domain import ConsumedRecord, VideoEvent
from .errors import EnvelopeError, Refusal

ENVELOPE_VERSION = 1
EVENT_TYPE = "checkout.video.uploaded"
# How much of a refused value a message (and so the log) shows.
SHOWN_CHARS = 80

# A UUID as str(uuid.UUID(...)) writes it: lowercase, hyphenated (the server's ids).
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SHA256 = re.compile(r"(?:[0-9a-f]{64})?")
# RFC 3339's date-time (JSON Schema's `date-time`): a date, a time and an offset.
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def parse(delivery: ConsumedRecord, *, buckets: Collection[str]) -> VideoEvent:
    """The event of a record whose every field is valid, its bucket one of `buckets`;
    EnvelopeError (with the field's Refusal) for anything else."""
    try:
        value = json.loads(delivery.value)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError(Refusal.NOT_JSON, "not JSON") from None
    if not isinstance(value, dict):
        raise EnvelopeError(Refusal.NOT_JSON, "not a JSON object")
    version = value.get("version")
    if type(version) is not int or version != ENVELOPE_VERSION:  # `true` == 1 in Python
        raise EnvelopeError(Refusal.VERSION, f"version {shown(version)}")
    if value.get("type") != EVENT_TYPE:
        raise EnvelopeError(Refusal.TYPE, f"type {shown(value.get('type'))}")
    event_id = _uuid(value, "event_id", Refusal.EVENT_ID)
    video_id = _uuid(value, "video_id", Refusal.VIDEO_ID)
    bucket = value.get("bucket")
    if not isinstance(bucket, str) or bucket not in buckets:
        raise EnvelopeError(Refusal.BUCKET, f"bucket {shown(bucket)} is not allowed")
    object_key = value.get("object_key")
    if object_key != input_key(video_id):
        raise EnvelopeError(
            Refusal.OBJECT_KEY,
            f"object_key {shown(object_key)} is not {input_key(video_id)!r}",
        )
    size_bytes = value.get("size_bytes")
    if type(size_bytes) is not int or size_bytes < 0:
        raise EnvelopeError(Refusal.SIZE, f"size_bytes {shown(size_bytes)}")
    sha256 = value.get("sha256")
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
        raise EnvelopeError(Refusal.SHA256, f"sha256 {shown(sha256)}")
    return VideoEvent(
        event_id=event_id,
        video_id=video_id,
        bucket=bucket,
        object_key=object_key,
        size_bytes=size_bytes,
        created_at=_date_time(value.get("created_at")),
        traceparent=delivery.header("traceparent"),
    )


def shown(value: object) -> str:
    """`value` as a message shows it: its repr, cut to SHOWN_CHARS (a record's text is
    anyone's, of any length)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 3]}... ({len(text)} chars)"


def _uuid(value: dict[str, object], name: str, refusal: Refusal) -> str:
    found = value.get(name)
    if not isinstance(found, str) or _UUID.fullmatch(found) is None:
        raise EnvelopeError(refusal, f"{name} {shown(found)} is not a UUID")
    return found


def _date_time(found: object) -> datetime:
    if isinstance(found, str) and _DATE_TIME.fullmatch(found) is not None:
        try:  # Python 3.11 reads `Z` and `T`, not their lower case
            return datetime.fromisoformat(found.upper())
        except ValueError:  # a month 13, a day 32
            pass
    raise EnvelopeError(Refusal.CREATED_AT, f"created_at {shown(found)}")
