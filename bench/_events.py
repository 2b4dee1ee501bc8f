"""Events for the benches, shaped as the server writes them (one video each, in BUCKET)."""

from __future__ import annotations

import uuid
from datetime import datetime

from checkout_server.domain import EventStatus, OutboxEvent, input_object_key

BUCKET = "videos"


def bench_event(
    created_at: datetime,
    status: EventStatus = EventStatus.NEW,
    ready_at: datetime | None = None,
) -> OutboxEvent:
    video_id = str(uuid.uuid4())
    return OutboxEvent(
        event_id=video_id,
        video_id=video_id,
        bucket=BUCKET,
        object_key=input_object_key(video_id),
        filename="bench.mp4",
        content_type="video/mp4",
        size_bytes=1000,
        sha256="0" * 64,
        status=status,
        created_at=created_at,
        updated_at=created_at,
        ready_at=ready_at,
    )
