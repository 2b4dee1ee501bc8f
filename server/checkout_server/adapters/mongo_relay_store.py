"""The relay's outbox view and its shard leases on MongoDB or FerretDB 1.24 (PyMongo async).

The relay reads and marks the outbox messages and mirrors each outcome (`sent`, `failed`)
into the event's status record first, writing the record when it is missing (see
mongo_outbox): a crash between the two writes leaves the message `new`, so it is published
again and both are marked again.

FerretDB 1.24 runs update/delete as a query followed by writes by `_id` that do not re-check
the filter, so no update here is relied upon as a lock: claiming rests on inserts into a
unique key (`_id` of a lease document is "shard:epoch"), and every update is harmless when it
loses a race (marking `sent` twice, rescheduling an event another relay already sent, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from ..domain import EventStatus
from ..errors import DatabaseUnavailable
from ..relay.ports import Lease, PendingEvent
from ..relay.sharding import relay_slot
from ._mongo_indexes import ensure_indexes
from .mongo_outbox import status_document

log = logging.getLogger(__name__)

Document = dict[str, Any]

NEW, SENT, FAILED = EventStatus.NEW.value, EventStatus.SENT.value, EventStatus.FAILED.value
# FerretDB 1.24 (SQLite) writes each matched document separately, at a cost that grows with
# the collection (measured: 15-25 ms per document at a few thousand documents), so updates
# are split into chunks that each finish well within the socket timeout.
UPDATE_CHUNK = 50


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + UPDATE_CHUNK]) for i in range(0, len(ids), UPDATE_CHUNK)]


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except DuplicateKeyError:
        raise
    except PyMongoError as exc:
        log.warning("relay store %s failed: %r", action, exc)
        raise DatabaseUnavailable() from exc


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class MongoOutboxRelayStore:
    """Implements relay.ports.OutboxRelayStore over the outbox and the status records."""

    def __init__(
        self, outbox: AsyncCollection[Document], statuses: AsyncCollection[Document]
    ) -> None:
        self._outbox = outbox
        self._statuses = statuses

    async def ensure_indexes(self) -> None:
        with _translated("ensure_indexes"):
            await ensure_indexes(
                self._outbox,
                [
                    IndexModel(
                        [("status", ASCENDING), ("relay_slot", ASCENDING)], name="relay_due"
                    ),
                    IndexModel([("status", ASCENDING), ("sent_at", ASCENDING)], name="relay_sweep"),
                ],
            )

    async def due(
        self, slot_ranges: Sequence[tuple[int, int]], now: datetime, limit: int
    ) -> list[PendingEvent]:
        if not slot_ranges:
            return []
        slots = [{"relay_slot": {"$gte": low, "$lt": high}} for low, high in slot_ranges]
        query: Document = {"status": NEW, "next_attempt_at": {"$lte": now}}
        if len(slots) == 1:
            query.update(slots[0])
        else:
            query["$or"] = slots
        with _translated("due"):
            found = self._outbox.find(
                query,
                {"video_id": 1, "payload": 1, "created_at": 1, "attempts": 1, "relay_slot": 1},
            )
            documents = await found.sort([("next_attempt_at", ASCENDING)]).limit(limit).to_list()
        return [
            PendingEvent(
                event_id=str(d["_id"]),
                video_id=str(d.get("video_id") or d["_id"]),
                payload=d.get("payload") or {},
                created_at=_utc(d["created_at"]),
                attempts=int(d.get("attempts") or 0),
                slot=d.get("relay_slot"),
            )
            for d in documents
        ]

    async def mark_sent(self, event_ids: Sequence[str], now: datetime) -> None:
        for chunk in _chunks(event_ids):
            with _translated("mark_sent"):
                await self._mirror(chunk, {"status": SENT, "sent_at": now, "updated_at": now})
                await self._outbox.update_many(
                    {"_id": {"$in": chunk}, "status": NEW},
                    {
                        "$set": {"status": SENT, "sent_at": now, "updated_at": now},
                        "$inc": {"attempts": 1},
                    },
                )

    async def reschedule(
        self, event_ids: Sequence[str], next_attempt_at: datetime, now: datetime
    ) -> None:
        for chunk in _chunks(event_ids):
            with _translated("reschedule"):
                await self._outbox.update_many(
                    {"_id": {"$in": chunk}, "status": NEW},
                    {"$set": {"next_attempt_at": next_attempt_at}, "$inc": {"attempts": 1}},
                )

    async def mark_failed(self, event_id: str, reason: str, now: datetime) -> None:
        with _translated("mark_failed"):
            await self._mirror([event_id], {"status": FAILED, "error": reason, "updated_at": now})
            await self._outbox.update_one(
                {"_id": event_id, "status": NEW},
                {
                    "$set": {"status": FAILED, "error": reason, "updated_at": now},
                    "$inc": {"attempts": 1},
                },
            )

    async def _mirror(self, event_ids: list[str], fields: Document) -> None:
        """Set the outcome on the events' status records that are still `new`, and write
        the records that are missing from their outbox messages."""
        query = {"_id": {"$in": event_ids}, "status": NEW}
        result = await self._statuses.update_many(query, {"$set": fields})
        if result.matched_count >= len(event_ids):
            return
        # Not matched: past `new` already (another relay, a replay), or not written yet (the
        # server stopped between its two inserts, or is just now between them).
        found = self._statuses.find({"_id": {"$in": event_ids}}, {"_id": 1})
        present = {d["_id"] async for d in found}
        missing = [i for i in event_ids if i not in present]
        messages = await self._outbox.find({"_id": {"$in": missing}}).to_list() if missing else []
        records = [status_document(m) | fields for m in messages]
        if records:
            log.info("writing missing status records", extra={"events": len(records)})
            try:
                await self._statuses.insert_many(records, ordered=False)
            except BulkWriteError as exc:
                # Written meanwhile by the server (updated below), or the idempotency key
                # belongs to an older record (a withdrawn duplicate, left as it is).
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
        # Records the server wrote after the first update (every record that exists now
        # existed when the presence check or the insert above saw it): update them too.
        await self._statuses.update_many(query, {"$set": fields})

    async def backfill_slots(self, limit: int) -> int:
        with _translated("backfill_slots"):
            found = self._outbox.find(
                {"status": NEW, "relay_slot": {"$exists": False}},
                {"_id": 1, "created_at": 1, "next_attempt_at": 1},
            )
            documents = await found.limit(limit).to_list()
            if not documents:
                return 0
            # The seed service's documents have neither field: due from their creation on.
            await self._outbox.bulk_write(
                [
                    UpdateOne(
                        {"_id": d["_id"]},
                        {
                            "$set": {
                                "relay_slot": relay_slot(str(d["_id"])),
                                "next_attempt_at": d.get("next_attempt_at") or d["created_at"],
                            }
                        },
                    )
                    for d in documents
                ],
                ordered=False,
            )
        return len(documents)

    async def oldest_unsent_created_at(self) -> datetime | None:
        with _translated("oldest_unsent"):
            found = self._outbox.find({"status": NEW}, {"created_at": 1})
            documents = await found.sort([("created_at", ASCENDING)]).limit(1).to_list()
        return _utc(documents[0]["created_at"]) if documents else None

    async def sweep_sent(self, sent_before: datetime, limit: int) -> int:
        with _translated("sweep_sent"):
            found = self._outbox.find({"status": SENT, "sent_at": {"$lt": sent_before}}, {"_id": 1})
            ids = [d["_id"] for d in await found.limit(limit).to_list()]
            if not ids:
                return 0
            # The status filter again: FerretDB may not re-check it, but a `sent` event never
            # becomes unsent, so what the query matched is still safe to delete.
            result = await self._outbox.delete_many({"_id": {"$in": ids}, "status": SENT})
        return len(ids) if result.deleted_count is None else int(result.deleted_count)


class MongoLeaseStore:
    """Implements relay.ports.LeaseStore: lease documents `_id = "shard:epoch"` (the unique
    key that decides every claim) and one heartbeat document per relay."""

    def __init__(
        self, leases: AsyncCollection[Document], members: AsyncCollection[Document]
    ) -> None:
        self._leases = leases
        self._members = members

    async def ensure_indexes(self) -> None:
        with _translated("ensure_lease_indexes"):
            await ensure_indexes(
                self._leases,
                [IndexModel([("shard", ASCENDING), ("epoch", DESCENDING)], name="shard_epoch")],
            )

    async def latest(self, shards: Sequence[int]) -> dict[int, Lease]:
        with _translated("latest"):
            documents = await self._leases.find({"shard": {"$in": list(shards)}}).to_list()
        newest: dict[int, Lease] = {}
        for d in documents:
            lease = Lease(
                shard=int(d["shard"]),
                epoch=int(d["epoch"]),
                owner=str(d.get("owner", "")),
                expires_at=_utc(d["expires_at"]),
                released=bool(d.get("released", False)),
            )
            if lease.shard not in newest or lease.epoch > newest[lease.shard].epoch:
                newest[lease.shard] = lease
        return newest

    async def insert_lease(self, lease: Lease) -> bool:
        with _translated("insert_lease"):
            try:
                await self._leases.insert_one(
                    {
                        "_id": f"{lease.shard}:{lease.epoch}",
                        "shard": lease.shard,
                        "epoch": lease.epoch,
                        "owner": lease.owner,
                        "expires_at": lease.expires_at,
                        "released": False,
                    }
                )
            except DuplicateKeyError:
                return False
        return True

    async def renew(self, leases: Sequence[Lease], expires_at: datetime) -> None:
        if not leases:
            return
        with _translated("renew"):
            await self._leases.update_many(
                {"_id": {"$in": [f"{lease.shard}:{lease.epoch}" for lease in leases]}},
                {"$set": {"expires_at": expires_at}},
            )

    async def release(self, lease: Lease, now: datetime) -> None:
        with _translated("release"):
            await self._leases.update_one(
                {"_id": f"{lease.shard}:{lease.epoch}"},
                {"$set": {"released": True, "expires_at": now}},
            )

    async def prune(self, shard: int, below_epoch: int) -> None:
        with _translated("prune"):
            await self._leases.delete_many({"shard": shard, "epoch": {"$lt": below_epoch}})

    async def heartbeat(self, member: str, expires_at: datetime) -> None:
        with _translated("heartbeat"):
            await self._members.update_one(
                {"_id": member}, {"$set": {"expires_at": expires_at}}, upsert=True
            )

    async def members(self, alive_at: datetime) -> list[str]:
        with _translated("members"):
            documents = await self._members.find({"expires_at": {"$gt": alive_at}}).to_list()
        return [str(d["_id"]) for d in documents]

    async def leave(self, member: str) -> None:
        with _translated("leave"):
            await self._members.delete_one({"_id": member})
