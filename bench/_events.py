"""Events for the benches, shaped as the server writes them (one video each, in BUCKET)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from checkout_server.adapters.mongo_status_hours import MongoStatusHours
from checkout_server.domain import EventStatus, OutboxEvent, input_object_key
from checkout_server.outbox.document import HOUR, status_document, to_document

BUCKET = "videos"
BATCH = 1000


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


async def store_records(
    statuses: AsyncCollection[dict[str, Any]], events: Iterable[OutboxEvent]
) -> None:
    """The status records of `events`, written straight into `statuses` BATCH at a time, each
    batch's hours registered first, as the server's writers do (a record in an unregistered
    hour is never listed). `events` is read lazily: a generator keeps a million off the heap."""
    hours = MongoStatusHours(statuses)
    batch: list[dict[str, Any]] = []
    for event in events:
        batch.append(status_document(to_document(event)))
        if len(batch) == BATCH:
            await hours.register(r[HOUR] for r in batch)
            await statuses.insert_many(batch)
            batch = []
    if batch:
        await hours.register(r[HOUR] for r in batch)
        await statuses.insert_many(batch)
