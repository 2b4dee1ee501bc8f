"""The outbox messages and the status records, against real FerretDB and MinIO: statuses
outlive the swept messages, and no crash between the two writes loses an event."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.adapters.mongo_outbox import MongoOutbox
from checkout_server.adapters.mongo_relay_store import MongoOutboxRelayStore
from checkout_server.domain import input_object_key
from checkout_server.errors import DuplicateIdempotencyKey
from checkout_server.outbox.document import status_document, to_document
from tests.integration.storage_checks import object_keys
from tests.integration.test_relay import new_event
from tests.integration.test_status import upload

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Collection = AsyncCollection[dict[str, Any]]


async def _status(stub: Stub, event_id: str) -> str:
    reply = await stub.GetStatus(pb.GetStatusRequest(event_id=event_id))
    return str(reply.operation.status)


async def test_sweeper_deletes_old_sent_messages_only_and_statuses_stay(
    stub: Stub,
    relay_store: MongoOutboxRelayStore,
    outbox_collection: Collection,
    status_collection: Collection,
) -> None:
    old, recent, unsent = [(await upload(stub)).event_id for _ in range(3)]
    long_ago = datetime.now(UTC) - timedelta(days=30)
    await relay_store.mark_sent([old], long_ago)
    await relay_store.mark_sent([recent], datetime.now(UTC))

    deleted = await relay_store.sweep_sent(datetime.now(UTC) - timedelta(days=7), limit=100)

    assert deleted == 1
    remaining = {d["_id"]: d["status"] async for d in outbox_collection.find({})}
    assert remaining == {recent: "sent", unsent: "new"}
    assert await status_collection.count_documents({}) == 3
    assert [await _status(stub, e) for e in (old, recent, unsent)] == ["sent", "sent", "new"]
    listed = await stub.ListStatuses(pb.ListStatusesRequest())
    assert (listed.total, {o.event_id for o in listed.operations}) == (3, {old, recent, unsent})


async def test_relay_writes_the_record_a_stopped_server_did_not(
    stub: Stub,
    bucket: str,
    relay_store: MongoOutboxRelayStore,
    outbox_collection: Collection,
    status_collection: Collection,
) -> None:
    # The server stopped after committing the outbox message, before the status record.
    event = new_event(bucket)
    await outbox_collection.insert_one(to_document(event))

    assert await _status(stub, event.event_id) == "new"  # read from the message meanwhile
    await relay_store.mark_sent([event.event_id], datetime.now(UTC))

    record = await status_collection.find_one({"_id": event.event_id})
    assert record is not None
    assert (record["status"], record["payload"]["object_key"]) == ("sent", event.object_key)
    assert "relay_slot" not in record  # the relay's bookkeeping stays in the outbox
    assert await _status(stub, event.event_id) == "sent"
    listed = await stub.ListStatuses(pb.ListStatusesRequest())
    assert [o.event_id for o in listed.operations] == [event.event_id]


class LateServer:
    """The status records, with the server's record inserted right after the relay's first
    update: the interleaving of a server that is between its two inserts."""

    def __init__(self, records: Collection, late: dict[str, Any]) -> None:
        self._records = records
        self._late: dict[str, Any] | None = late

    async def update_many(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._records.update_many(*args, **kwargs)
        if self._late is not None:
            await self._records.insert_one(self._late)
            self._late = None
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


async def test_a_record_written_during_the_relays_update_is_marked_too(
    bucket: str, outbox_collection: Collection, status_collection: Collection
) -> None:
    event = new_event(bucket)
    message = to_document(event)
    await outbox_collection.insert_one(message)
    racing = cast("Collection", LateServer(status_collection, status_document(message)))
    store = MongoOutboxRelayStore(outbox_collection, racing)

    await store.mark_sent([event.event_id], datetime.now(UTC))

    record = await status_collection.find_one({"_id": event.event_id})
    assert record is not None
    assert record["status"] == "sent"


async def test_failure_is_mirrored_into_the_status_record(
    stub: Stub, relay_store: MongoOutboxRelayStore, outbox_collection: Collection
) -> None:
    event_id = (await upload(stub)).event_id

    await relay_store.mark_failed(event_id, "message too large", datetime.now(UTC))

    reply = await stub.GetStatus(pb.GetStatusRequest(event_id=event_id))
    assert (reply.operation.status, reply.operation.error) == ("failed", "message too large")
    message = await outbox_collection.find_one({"_id": event_id})
    assert message is not None
    assert message["status"] == "failed"


async def test_idempotency_key_outlives_the_swept_message(
    stub: Stub,
    s3: Minio,
    bucket: str,
    relay_store: MongoOutboxRelayStore,
    outbox_collection: Collection,
) -> None:
    first = await upload(stub, idempotency_key="order-42")
    await relay_store.mark_sent([first.event_id], datetime.now(UTC) - timedelta(days=30))
    assert await relay_store.sweep_sent(datetime.now(UTC) - timedelta(days=7), limit=10) == 1

    again = await upload(stub, idempotency_key="order-42")

    assert (again.event_id, again.deduplicated) == (first.event_id, True)
    assert await outbox_collection.count_documents({}) == 0  # nothing new to publish
    assert await object_keys(s3, bucket) == [input_object_key(first.video_id)]


async def test_a_withdrawn_duplicate_never_wakes_the_relays(
    bucket: str, outbox_collection: Collection, status_collection: Collection
) -> None:
    woken: list[None] = []
    store = MongoOutbox(outbox_collection, status_collection, on_added=lambda: woken.append(None))
    await store.ensure_indexes()
    # The key's first event: published and swept, its record holds the key.
    first = replace(new_event(bucket), idempotency_key="order-7")
    await status_collection.insert_one(status_document(to_document(first)))

    with pytest.raises(DuplicateIdempotencyKey):
        await store.add(replace(new_event(bucket), idempotency_key="order-7"))

    assert await outbox_collection.count_documents({}) == 0  # withdrawn
    assert woken == []  # a woken relay could have published it first
    await store.add(new_event(bucket))
    assert woken == [None]


async def test_a_record_the_relay_wrote_first_is_kept(
    bucket: str, outbox_collection: Collection, status_collection: Collection
) -> None:
    event = new_event(bucket)
    store = MongoOutbox(outbox_collection, status_collection)
    await store.ensure_indexes()
    # The relay published the message and wrote the record before the server's second insert.
    healed = to_document(event) | {"status": "sent"}
    await status_collection.insert_one({k: v for k, v in healed.items() if k != "relay_slot"})

    await store.add(event)

    assert await outbox_collection.count_documents({"_id": event.event_id}) == 1
    record = await status_collection.find_one({"_id": event.event_id})
    assert record is not None
    assert record["status"] == "sent"


async def test_the_seed_services_new_events_become_due(
    relay_store: MongoOutboxRelayStore, outbox_collection: Collection
) -> None:
    # The shape the seed's upload endpoint inserted: no slot, no next_attempt_at.
    created = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)  # BSON: ms
    seed_id = str(uuid.uuid4())
    await outbox_collection.insert_one(
        {"_id": seed_id, "payload": {"bucket": "videos"}, "created_at": created, "status": "new"}
    )
    assert await relay_store.due([(0, 1024)], datetime.now(UTC), 10) == []

    assert await relay_store.backfill_slots(100) == 1

    due = await relay_store.due([(0, 1024)], datetime.now(UTC), 10)
    assert [(e.event_id, e.created_at) for e in due] == [(seed_id, created)]
    assert await relay_store.backfill_slots(100) == 0
