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
from collections.abc import Sequence
from datetime import datetime

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..outbox import document as f
from ..outbox.document import FAILED, NEW, SENT, Document, status_document, utc
from ..outbox.sharding import relay_slot
from ..relay.ports import Lease, PendingEvent
from .mongo_errors import translated
from .mongo_indexes import ensure_indexes
from .mongo_status_hours import MongoStatusHours

log = logging.getLogger(__name__)

# FerretDB 1.24 writes each matched document of an update separately, and over SQLite each
# of those writes scans the table (about 7 us per stored document here): an update of 200
# documents over 5,000 took 6-7 s, past the socket timeout when relays contend, and a batch
# that timed out after Kafka had it was published again; a long write also holds SQLite's
# only write lock, so lease renewals wait. Updates therefore go in chunks (`update_chunk`,
# RELAY_UPDATE_CHUNK). Over PostgreSQL the writes go by index and an update's cost is its one
# scan of the collection (the `$in` filter runs in FerretDB's Go code): there one update per
# batch is fastest. A delete is one statement for all its ids, on both.
UPDATE_CHUNK = 50
_DUPLICATE_KEY = 11000


class MongoOutboxRelayStore:
    """Implements relay.ports.OutboxRelayStore over the outbox and the status records."""

    def __init__(
        self,
        outbox: AsyncCollection[Document],
        statuses: AsyncCollection[Document],
        *,
        keep_sent: bool = True,
        update_chunk: int = UPDATE_CHUNK,
    ) -> None:
        """`keep_sent`: sent messages stay in the outbox, `sent`, until the sweeper deletes
        them; otherwise they are deleted as they are marked (their status records keep
        `sent_at`), which keeps the outbox, read by every poll, as small as the backlog.
        `update_chunk`: the most documents one update names (see UPDATE_CHUNK)."""
        self._outbox = outbox
        self._statuses = statuses
        self._hours = MongoStatusHours(statuses)
        self._keep_sent = keep_sent
        self._update_chunk = update_chunk

    def _chunks(self, ids: Sequence[str]) -> list[list[str]]:
        size = self._update_chunk
        return [list(ids[i : i + size]) for i in range(0, len(ids), size)]

    async def ensure_indexes(self) -> None:
        with translated("ensure_indexes"):
            await ensure_indexes(
                self._outbox,
                [
                    IndexModel(
                        [(f.STATUS, ASCENDING), (f.RELAY_SLOT, ASCENDING)], name="relay_due"
                    ),
                    IndexModel([(f.STATUS, ASCENDING), (f.SENT_AT, ASCENDING)], name="relay_sweep"),
                ],
            )

    async def due(
        self, slot_ranges: Sequence[tuple[int, int]], now: datetime, limit: int
    ) -> list[PendingEvent]:
        if not slot_ranges:
            return []
        slots = [{f.RELAY_SLOT: {"$gte": low, "$lt": high}} for low, high in slot_ranges]
        query: Document = {f.STATUS: NEW, f.NEXT_ATTEMPT_AT: {"$lte": now}}
        if len(slots) == 1:
            query.update(slots[0])
        else:
            query["$or"] = slots
        with translated("due"):
            found = self._outbox.find(
                query,
                dict.fromkeys(
                    (f.VIDEO_ID, f.PAYLOAD, f.CREATED_AT, f.ATTEMPTS, f.RELAY_SLOT, f.TRACEPARENT),
                    1,
                ),
            )
            # One round trip: the whole batch in the first reply (PyMongo's first batch is
            # 101 documents otherwise, and the rest costs a getMore).
            found = found.sort([(f.NEXT_ATTEMPT_AT, ASCENDING)]).limit(limit).batch_size(limit)
            documents = await found.to_list()
        return [
            PendingEvent(
                event_id=str(d[f.ID]),
                video_id=str(d.get(f.VIDEO_ID) or d[f.ID]),
                payload=d.get(f.PAYLOAD) or {},
                created_at=utc(d[f.CREATED_AT]),
                attempts=int(d.get(f.ATTEMPTS) or 0),
                slot=d.get(f.RELAY_SLOT),
                traceparent=str(d.get(f.TRACEPARENT) or ""),
                owner=str(d.get(f.OWNER) or ""),
            )
            for d in documents
        ]

    async def mark_sent(self, event_ids: Sequence[str], now: datetime) -> None:
        # The status records first (see the module's docstring), then the outbox messages.
        outcome = {f.STATUS: SENT, f.SENT_AT: now, **f.changed_at(now)}
        with translated("mark_sent"):
            for chunk in self._chunks(event_ids):
                await self._mirror(chunk, outcome)
            if not self._keep_sent:
                # One statement for the batch; the filter again, as in sweep_sent.
                await self._outbox.delete_many({**_ids(event_ids), f.STATUS: NEW})
                return
            for chunk in self._chunks(event_ids):
                await self._outbox.update_many(
                    {f.ID: {"$in": chunk}, f.STATUS: NEW},
                    {"$set": outcome, "$inc": {f.ATTEMPTS: 1}},
                )

    async def reschedule(
        self, event_ids: Sequence[str], next_attempt_at: datetime, now: datetime
    ) -> None:
        with translated("reschedule"):
            for chunk in self._chunks(event_ids):
                await self._outbox.update_many(
                    {f.ID: {"$in": chunk}, f.STATUS: NEW},
                    {"$set": {f.NEXT_ATTEMPT_AT: next_attempt_at}, "$inc": {f.ATTEMPTS: 1}},
                )

    async def mark_failed(self, event_id: str, reason: str, now: datetime) -> None:
        with translated("mark_failed"):
            outcome = {f.STATUS: FAILED, f.ERROR: reason, **f.changed_at(now)}
            await self._mirror([event_id], outcome)
            await self._outbox.update_one(
                {f.ID: event_id, f.STATUS: NEW}, {"$set": outcome, "$inc": {f.ATTEMPTS: 1}}
            )

    async def _mirror(self, event_ids: list[str], fields: Document) -> None:
        """Set the outcome on the events' status records that are still `new`, and write
        the records that are missing from their outbox messages."""
        query = {**_ids(event_ids), f.STATUS: NEW}
        result = await self._statuses.update_many(query, {"$set": fields})
        if result.matched_count >= len(event_ids):
            return
        # Not matched: past `new` already (another relay, a replay), or not written yet (the
        # server stopped between its two inserts, or is just now between them).
        found = self._statuses.find(_ids(event_ids), {f.ID: 1})
        present = {d[f.ID] async for d in found}
        missing = [i for i in event_ids if i not in present]
        messages = await self._outbox.find({f.ID: {"$in": missing}}).to_list() if missing else []
        records = [status_document(m) | fields for m in messages]
        if records:
            log.info("writing missing status records", extra={"events": len(records)})
            await self._hours.register(r[f.HOUR] for r in records)
            try:
                await self._statuses.insert_many(records, ordered=False)
            except BulkWriteError as exc:
                # Written meanwhile by the server (updated below), or the idempotency key
                # belongs to an older record (a withdrawn duplicate, left as it is).
                if any(e.get("code") != _DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                    raise
        # Records the server wrote after the first update (every record that exists now
        # existed when the presence check or the insert above saw it): update them too.
        await self._statuses.update_many(query, {"$set": fields})

    async def backfill_slots(self, limit: int) -> int:
        with translated("backfill_slots"):
            found = self._outbox.find(
                {f.STATUS: NEW, f.RELAY_SLOT: {"$exists": False}},
                dict.fromkeys((f.ID, f.CREATED_AT, f.NEXT_ATTEMPT_AT), 1),
            )
            documents = await found.limit(limit).to_list()
            if not documents:
                return 0
            # The seed service's documents have neither field: due from their creation on.
            await self._outbox.bulk_write(
                [
                    UpdateOne(
                        {f.ID: d[f.ID]},
                        {
                            "$set": {
                                f.RELAY_SLOT: relay_slot(str(d[f.ID])),
                                f.NEXT_ATTEMPT_AT: d.get(f.NEXT_ATTEMPT_AT) or d[f.CREATED_AT],
                            }
                        },
                    )
                    for d in documents
                ],
                ordered=False,
            )
        return len(documents)

    async def oldest_unsent_created_at(self) -> datetime | None:
        with translated("oldest_unsent"):
            found = self._outbox.find({f.STATUS: NEW}, {f.CREATED_AT: 1})
            documents = await found.sort([(f.CREATED_AT, ASCENDING)]).limit(1).to_list()
        return utc(documents[0][f.CREATED_AT]) if documents else None

    async def sweep_sent(self, sent_before: datetime, limit: int) -> int:
        with translated("sweep_sent"):
            found = self._outbox.find({f.STATUS: SENT, f.SENT_AT: {"$lt": sent_before}}, {f.ID: 1})
            ids = [d[f.ID] for d in await found.limit(limit).to_list()]
            if not ids:
                return 0
            # The status filter again: FerretDB may not re-check it, but a `sent` event never
            # becomes unsent, so what the query matched is still safe to delete.
            result = await self._outbox.delete_many({f.ID: {"$in": ids}, f.STATUS: SENT})
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
        with translated("ensure_lease_indexes"):
            await ensure_indexes(
                self._leases,
                [IndexModel([("shard", ASCENDING), ("epoch", DESCENDING)], name="shard_epoch")],
            )

    async def latest(self, shards: Sequence[int]) -> dict[int, Lease]:
        with translated("latest"):
            documents = await self._leases.find({"shard": {"$in": list(shards)}}).to_list()
        newest: dict[int, Lease] = {}
        for d in documents:
            lease = Lease(
                shard=int(d["shard"]),
                epoch=int(d["epoch"]),
                owner=str(d.get("owner", "")),
                expires_at=utc(d["expires_at"]),
                released=bool(d.get("released", False)),
            )
            if lease.shard not in newest or lease.epoch > newest[lease.shard].epoch:
                newest[lease.shard] = lease
        return newest

    async def insert_lease(self, lease: Lease) -> bool:
        with translated("insert_lease"):
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
        with translated("renew"):
            await self._leases.update_many(
                {"_id": {"$in": [f"{lease.shard}:{lease.epoch}" for lease in leases]}},
                {"$set": {"expires_at": expires_at}},
            )

    async def release(self, lease: Lease, now: datetime) -> None:
        with translated("release"):
            await self._leases.update_one(
                {"_id": f"{lease.shard}:{lease.epoch}"},
                {"$set": {"released": True, "expires_at": now}},
            )

    async def prune(self, shard: int, below_epoch: int) -> None:
        with translated("prune"):
            await self._leases.delete_many({"shard": shard, "epoch": {"$lt": below_epoch}})

    async def heartbeat(self, member: str, expires_at: datetime) -> None:
        with translated("heartbeat"):
            await self._members.update_one(
                {"_id": member}, {"$set": {"expires_at": expires_at}}, upsert=True
            )

    async def members(self, alive_at: datetime) -> list[str]:
        with translated("members"):
            documents = await self._members.find({"expires_at": {"$gt": alive_at}}).to_list()
        return [str(d["_id"]) for d in documents]

    async def leave(self, member: str) -> None:
        with translated("leave"):
            await self._members.delete_one({"_id": member})


def _ids(event_ids: Sequence[str]) -> Document:
    """The filter of these ids: one id by equality, which FerretDB 1.24 runs in SQL (an
    `$in` it runs in Go, over every document: at 100,000 status records a mark of one event
    took about 300 ms that way); several by `$in`."""
    if len(event_ids) == 1:
        return {f.ID: event_ids[0]}
    return {f.ID: {"$in": list(event_ids)}}
