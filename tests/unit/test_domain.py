"""Domain values: the one factory of a new outbox event."""

from __future__ import annotations

from datetime import UTC, datetime

from checkout_server.domain import VIDEO_CONTENT_TYPE, EventStatus, OutboxEvent


def test_a_new_event_is_new_and_created_when_updated() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    event = OutboxEvent.new(
        event_id="e", video_id="v", bucket="videos", object_key="input/v.mp4", size_bytes=3, now=now
    )
    assert event == OutboxEvent(
        event_id="e",
        video_id="v",
        bucket="videos",
        object_key="input/v.mp4",
        filename="",
        content_type=VIDEO_CONTENT_TYPE,
        size_bytes=3,
        sha256="",
        status=EventStatus.NEW,
        created_at=now,
        updated_at=now,
    )
    assert event.api_status is EventStatus.NEW
