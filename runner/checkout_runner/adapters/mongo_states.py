"""StateStore over PyMongo's async API: one record per event in the runner's own collection.

Fields: `_id` (event id), `event_created_at` (the envelope's `created_at`, in UTC, ISO 8601:
with the id, which event the record is of), `video_id`, `bucket`, `state` (processing |
predictable | ready), `attempts`, `runner_id` (the member that worked on it last), `trace_id`,
`started_at`, `updated_at`, and once done `outcome` (ok | failed), `reason`, `frames`,
`result_key`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from ..domain import VideoEvent, VideoState
from ..errors import DatabaseUnavailable

log = logging.getLogger(__name__)

Document = dict[str, Any]


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise DatabaseUnavailable(f"{action}: {type(exc).__name__}: {exc}") from exc


def _stamp(created_at: datetime) -> str:
    """The event's `created_at` as stored: one instant, one string."""
    return created_at.astimezone(UTC).isoformat(timespec="microseconds")


def _of(event: VideoEvent) -> Document:
    """The filter of the event's own record (not one of an earlier event with its id)."""
    return {"_id": event.event_id, "event_created_at": _stamp(event.created_at)}


class MongoStateStore:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._states = collection

    async def ensure_indexes(self) -> None:
        with _translated("ensure_indexes"):
            await self._states.create_indexes(
                [IndexModel([("state", ASCENDING), ("updated_at", ASCENDING)], name="by_state")]
            )

    async def state_of(self, event: VideoEvent) -> VideoState | None:
        with _translated("state_of"):
            found = await self._states.find_one(_of(event), {"state": 1})
        return VideoState(found["state"]) if found else None

    async def begin(self, event: VideoEvent, *, runner_id: str, trace_id: str) -> int:
        now = datetime.now(UTC)
        fields = {
            "event_created_at": _stamp(event.created_at),
            "video_id": event.video_id,
            "bucket": event.bucket,
            "state": VideoState.PROCESSING.value,
            "runner_id": runner_id,
            "trace_id": trace_id,
            "started_at": now,
            "updated_at": now,
        }
        with _translated("begin"):
            found = await self._states.find_one_and_update(
                _of(event),
                {"$set": fields, "$inc": {"attempts": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if found is not None:
                return int(found["attempts"])
            # No record, or one of an earlier event with this id: this event's first attempt.
            await self._states.replace_one(
                {"_id": event.event_id}, {**fields, "attempts": 1}, upsert=True
            )
        return 1

    async def advance(self, event_id: str, state: VideoState, **fields: object) -> None:
        with _translated("advance"):
            await self._states.update_one(
                {"_id": event_id},
                {"$set": {**fields, "state": state.value, "updated_at": datetime.now(UTC)}},
            )
