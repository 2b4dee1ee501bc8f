"""The commit side of the server's outbox on MongoDB (or FerretDB 1.24), via PyMongo async.

The two documents of an event and their fields are described in `outbox/document.py`; this
module writes them and reads them back for idempotency (the status records are listed and
marked by `mongo_status_records.py`). There are no multi-document transactions on FerretDB 1.24,
so the two inserts of an event are ordered so that a crash between them loses nothing: the
outbox message first (the commit point; the relay heals a missing status record), then the
status record. Only features both servers support are used: single-document inserts and
reads, unique and compound indexes. Uniqueness of idempotency keys rests on unique indexes
over `dedup_key` in both collections (outbox messages are swept; the records stay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..domain import OutboxEvent
from ..errors import DuplicateIdempotencyKey
from ..outbox import document as f
from ..outbox.document import Document, from_document, status_document, to_document
from .mongo_errors import translated
from .mongo_indexes import ensure_indexes
from .mongo_status_hours import MongoStatusHours

log = logging.getLogger(__name__)

_DEDUP_INDEX = IndexModel([(f.DEDUP_KEY, ASCENDING)], unique=True, name="dedup_key_unique")
# The events of a video (its upload's and its re-requests'): ownership, the object sweep.
_VIDEO_INDEX = IndexModel([(f.VIDEO_ID, ASCENDING)], name="video")
# The same two on both collections; the relay adds its own to the outbox (mongo_relay_store),
# the listings theirs to the status records (mongo_status_records).
_INDEXES = [_DEDUP_INDEX, _VIDEO_INDEX]


class MongoOutbox:
    """Implements ports.Outbox over the outbox and the status records (built by the wiring,
    shared)."""

    def __init__(
        self,
        outbox: AsyncCollection[Document],
        statuses: AsyncCollection[Document],
        *,
        on_added: Callable[[], None] | None = None,
        on_recorded: Callable[[OutboxEvent], None] | None = None,
    ) -> None:
        """`on_added` is called after each outbox message is committed and its status record
        settled (to wake the relays; not for a message withdrawn as a duplicate),
        `on_recorded` with the event of each status record written (to reach this process's
        watchers at once, and the status topic); neither may block or raise."""
        self._outbox = outbox
        self._statuses = statuses
        self._hours = MongoStatusHours(statuses)
        self._on_added = on_added
        self._on_recorded = on_recorded

    async def ensure_indexes(self) -> None:
        with translated("ensure_indexes"):
            await ensure_indexes(self._outbox, _INDEXES)
            await ensure_indexes(self._statuses, _INDEXES)

    async def add(self, event: OutboxEvent) -> None:
        message = to_document(event)
        with translated("add"):
            # Before the commit point: a record in an unregistered hour is never listed.
            await self._hours.register([message[f.HOUR]])
            try:
                await self._outbox.insert_one(message)
            except DuplicateKeyError:
                raise await self._duplicate(message[f.DEDUP_KEY]) from None
        # Committed: the relay will publish the message whatever happens below. It is woken
        # once the record is settled, never before a withdrawal (a woken relay would publish
        # the message about to be withdrawn; its poll rarely comes in between).
        withdrawn = False
        try:
            await self._statuses.insert_one(status_document(message))
        except DuplicateKeyError:
            with translated("add"):
                if await self._statuses.find_one({f.ID: event.event_id}, {f.ID: 1}):
                    return  # the relay was quicker and wrote the record itself
                # The key was used before the outbox message of that use expired: withdraw
                # ours (a crash before this line publishes it; the relay then finds the key
                # taken and leaves the older record alone).
                withdrawn = True
                await self._outbox.delete_one({f.ID: event.event_id})
                raise await self._duplicate(message[f.DEDUP_KEY]) from None
        except PyMongoError as exc:
            log.warning(
                "status record not written; the relay writes it",
                extra={"event_id": event.event_id, "error": repr(exc)},
            )
        else:
            if self._on_recorded is not None:
                self._on_recorded(event)
        finally:
            if self._on_added is not None and not withdrawn:
                self._on_added()

    async def _duplicate(self, dedup_key: str) -> Exception:
        """The error for an insert refused on `dedup_key`: the event holding that key."""
        existing = await self._find_one({f.DEDUP_KEY: dedup_key})
        if existing is None:  # the duplicate was the _id itself: a bug, not a retry
            return RuntimeError(f"duplicate event id for key {dedup_key!r}")
        return DuplicateIdempotencyKey(existing)

    async def _find_one(self, query: Document) -> OutboxEvent | None:
        """A status record, else the outbox message (its record not written yet)."""
        document = await self._statuses.find_one(query)
        if document is None:
            document = await self._outbox.find_one(query)
        return None if document is None else from_document(document)

    async def get(self, event_id: str) -> OutboxEvent | None:
        with translated("get"):
            return await self._find_one({f.ID: event_id})

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> OutboxEvent | None:
        with translated("find_by_idempotency_key"):
            document = await self._statuses.find_one({f.DEDUP_KEY: f.dedup_key(key, owner=owner)})
        return None if document is None else from_document(document)

    async def videos_with_events(self, video_ids: Sequence[str]) -> set[str]:
        # The outbox first, then the status records of the rest: a message is deleted only
        # after its record is written (by `add` or the relay), so an event moving from one
        # to the other between the two queries is seen in one of them. `_id` finds the
        # seed's messages too (no top-level `video_id`: an upload's id is its video's).
        wanted = set(video_ids)
        named: set[str] = set()
        with translated("videos_with_events"):
            for collection in (self._outbox, self._statuses):
                rest = sorted(wanted - named)
                if not rest:
                    break
                found = collection.find(
                    {"$or": [{f.ID: {"$in": rest}}, {f.VIDEO_ID: {"$in": rest}}]},
                    {f.ID: 1, f.VIDEO_ID: 1},
                )
                async for document in found:
                    named |= {str(document[f.ID]), str(document.get(f.VIDEO_ID))} & wanted
        return named

    async def delete_all(self) -> int:
        with translated("delete_all"):
            # Messages first: no message may outlive its record and be published after it.
            messages = await self._outbox.delete_many({})
            records = await self._statuses.delete_many({})
            await self._hours.forget_old()
        # A message whose record was never written is an event too.
        return max(records.deleted_count, messages.deleted_count)

    async def ping(self) -> None:
        with translated("ping"):
            await self._statuses.database.command("ping")
