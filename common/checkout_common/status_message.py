"""The status topic's records (STATUS_TOPIC, `checkout.status.v1`): how status changes reach
every server's watchers without a database query (docs/status.md, "Watching").

Two kinds, each a JSON object keyed by the event id (`contract/status.v1.schema.json`):
- `checkout.status.changed`: an event's status record, by the server that wrote it (a new
  event, a result it found) or by the relay (`sent` once Kafka acknowledged it, `failed`);
- `checkout.result.written`: the detection runner wrote an event's result JSON. A hint, not a
  status: each server checks the result in storage and marks the record, so a runner
  cannot report a result it did not write.

Readers skip what they do not know (another `type` or `version`), so kinds and fields may be
added within version 1. With a shared secret (the servers' and relays' WAKE_SECRET) a status
change carries its HMAC in the SIGNATURE header, and readers refuse one without it: a writer
that only announces results (the runner, which has no secret) cannot show watchers a status.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

VERSION: Final = 1
STATUS_CHANGED: Final = "checkout.status.changed"
RESULT_WRITTEN: Final = "checkout.result.written"
DEFAULT_TOPIC: Final = "checkout.status.v1"
# Readers refuse larger records unread: ours are a few hundred bytes.
MAX_BYTES: Final = 16 * 1024
# The record header of a status change's signature (hex HMAC-SHA256 of the value).
SIGNATURE: Final = "checkout-signature"
_SIGNED: Final = b"checkout.status.v1\n"  # what a signature is of: these records only


def encode(kind: str, fields: Mapping[str, Any]) -> bytes:
    """A record's value: `fields` (datetimes as ISO 8601 UTC with milliseconds) under the
    version and the kind."""
    body = {"version": VERSION, "type": kind}
    body.update({k: _plain(v) for k, v in fields.items()})
    return json.dumps(body, separators=(",", ":")).encode()


def decode(value: bytes | None) -> dict[str, Any] | None:
    """The fields of a record of a known kind and version, or None for anything else (to be
    skipped): not JSON, not an object, too large, or without an `event_id`."""
    if not value or len(value) > MAX_BYTES:
        return None
    try:
        body = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if (
        not isinstance(body, dict)
        or body.get("version") != VERSION
        or body.get("type") not in (STATUS_CHANGED, RESULT_WRITTEN)
        or not isinstance(body.get("event_id"), str)
    ):
        return None
    return body


def signature(secret: str, value: bytes) -> bytes:
    """The SIGNATURE header's value for a record's `value`."""
    return hmac.new(secret.encode(), _SIGNED + value, hashlib.sha256).hexdigest().encode()


def signed(secret: str, value: bytes, header: bytes | None) -> bool:
    """Whether `header` is `value`'s signature with `secret`."""
    return header is not None and hmac.compare_digest(header, signature(secret, value))


def result_written(
    *, event_id: str, video_id: str, bucket: str, result_key: str, written_at: datetime
) -> bytes:
    """What the runner announces after writing a result."""
    return encode(
        RESULT_WRITTEN,
        {
            "event_id": event_id,
            "video_id": video_id,
            "bucket": bucket,
            "result_key": result_key,
            "written_at": written_at,
        },
    )


def parse_time(value: object) -> datetime | None:
    """A time of a record (ISO 8601), or None when absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value
