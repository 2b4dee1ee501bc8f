"""StateStore over PyMongo's async API: one record per event in the runner's own collection.

Fields: `_id` (event id), `video_id`, `bucket`, `state` (processing | predictable | ready),
`attempts`, `runner_id` (the member that worked on it last), `trace_id`, `started_at`,
`updated_at`, and once done `outcome` (ok | failed), `reason`, `frames`, `result_key`.
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

from ..domain import VideoState
from ..errors import DatabaseUnavailable

log = logging.getLogger(__name__)

Document = dict[str, Any]


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise DatabaseUnavailable(f"{action}: {type(exc).__name__}: {exc}") from exc


class MongoStateStore:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._states = collection

    async def ensure_indexes(self) -> None:
        with _translated("ensure_indexes"):
            await self._states.create_indexes(
                [IndexModel([("state", ASCENDING), ("updated_at", ASCENDING)], name="by_state")]
            )

    async def state_of(self, event_id: str) -> VideoState | None:
        with _translated("state_of"):
            found = await self._states.find_one({"_id": event_id}, {"state": 1})
        return VideoState(found["state"]) if found else None

    async def begin(
        self, event_id: str, *, video_id: str, bucket: str, runner_id: str, trace_id: str
    ) -> int:
        now = datetime.now(UTC)
        with _translated("begin"):
            found = await self._states.find_one_and_update(
                {"_id": event_id},
                {
                    "$set": {
                        "video_id": video_id,
                        "bucket": bucket,
                        "state": VideoState.PROCESSING.value,
                        "runner_id": runner_id,
                        "trace_id": trace_id,
                        "started_at": now,
                        "updated_at": now,
                    },
                    "$inc": {"attempts": 1},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        return int(found["attempts"]) if found else 1  # upserted: never None

    async def advance(self, event_id: str, state: VideoState, **fields: object) -> None:
        with _translated("advance"):
            await self._states.update_one(
                {"_id": event_id},
                {"$set": {**fields, "state": state.value, "updated_at": datetime.now(UTC)}},
            )
