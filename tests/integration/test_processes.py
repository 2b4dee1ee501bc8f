"""Behaviours of the running processes that other tests check only at store level: the
relay's retention sweep and its permanent failures (a relay process on the real FerretDB and
Kafka), and the server's memory budget holding uploads back (a server process, watched
through its own metrics)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.outbox.document import Document, status_document
from devstack import Kafka, free_port
from tests.helpers import MiB, mp4_bytes, sha256_hex
from tests.integration.metrics_scrape import scrape
from tests.integration.processes import start_server
from tests.integration.records import insert_records
from tests.integration.storage_checks import object_sha256, wait_until
from tests.integration.test_relay import Relays, consume, new_document

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def relays(settings: ServerSettings, kafka: Kafka, tmp_path: Path) -> Iterator[Relays]:
    group = Relays(settings, kafka, f"processes-{uuid.uuid4().hex[:10]}", tmp_path)
    yield group
    group.stop_all()


async def insert(
    outbox: AsyncCollection[Document],
    statuses: AsyncCollection[Document],
    documents: list[Document],
) -> None:
    """As uploads write them: the status record, then the outbox message."""
    await insert_records(statuses, [status_document(d) for d in documents])
    await outbox.insert_many(documents)


async def test_the_relay_sweeps_sent_messages_after_their_retention(
    outbox_collection: AsyncCollection[Document],
    status_collection: AsyncCollection[Document],
    relays: Relays,
) -> None:
    retention_s = 4.0
    documents = [new_document() for _ in range(20)]
    ids = {d["_id"] for d in documents}
    await insert(outbox_collection, status_collection, documents)
    await asyncio.to_thread(
        relays.start,
        "relay-sweep",
        RELAY_SENT_RETENTION_S=str(retention_s),
        RELAY_SWEEP_INTERVAL_S="0.5",
    )

    # Watch each message: when it goes, at least the retention has passed since it was sent.
    gone_early: list[float] = []

    async def all_swept() -> bool:
        present = set(await outbox_collection.distinct("_id"))
        now = time.time()
        for record in await status_collection.find({"_id": {"$in": list(ids - present)}}).to_list():
            if record.get("sent_at") is None:
                gone_early.append(-1.0)  # deleted before it was even sent
            elif now - record["sent_at"].timestamp() < retention_s - 1:
                gone_early.append(now - record["sent_at"].timestamp())
        return not present & ids

    await wait_until(all_swept, timeout_s=90, what="every sent message swept")
    assert gone_early == []
    # The status records keep everything a client sees.
    records = await status_collection.find({"_id": {"$in": list(ids)}}).to_list()
    assert len(records) == 20
    assert {r["status"] for r in records} == {"sent"}
    assert all(r["sent_at"] is not None for r in records)


async def test_a_permanent_failure_marks_its_event_failed_and_spares_the_rest(
    outbox_collection: AsyncCollection[Document],
    status_collection: AsyncCollection[Document],
    relays: Relays,
    kafka: Kafka,
) -> None:
    good = [new_document() for _ in range(10)]
    bad = [new_document() for _ in range(2)]
    for document in bad:  # an event no Kafka message can be made of
        document["payload"]["size_bytes"] = "много"
    await insert(outbox_collection, status_collection, good[:5] + bad + good[5:])
    relay = await asyncio.to_thread(relays.start, "relay-permanent")

    async def settled() -> bool:
        records = await status_collection.find({}, {"status": 1}).to_list()
        return len(records) == 12 and all(r["status"] != "new" for r in records)

    await wait_until(settled, timeout_s=90, what="every event sent or failed")
    records = {r["_id"]: r for r in await status_collection.find({}).to_list()}
    assert {i: records[i]["status"] for i in (d["_id"] for d in bad)} == {
        d["_id"]: "failed" for d in bad
    }
    for document in bad:  # the reason, for people: what could not be serialised
        error = records[document["_id"]]["error"]
        assert error.startswith("cannot serialise event: ValueError"), error
    assert {records[d["_id"]]["status"] for d in good} == {"sent"}
    # Only the good ones reached Kafka; the failed are not retried (they are not `new`).
    kafka_records = await consume(kafka, relays.topic, expected=10)
    assert {r.key.decode() for r in kafka_records} == {d["_id"] for d in good}
    failed_messages = await outbox_collection.find(
        {"_id": {"$in": [d["_id"] for d in bad]}}
    ).to_list()
    assert all(m["status"] == "failed" and m["attempts"] == 1 for m in failed_messages)
    assert relay.running


# --- the memory budget of a server process ---------------------------------------------------


@pytest.fixture
async def budget_server(settings: ServerSettings, tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    """A server process whose uploads may buffer 10 MiB together (two 5 MiB parts), and wait
    a minute for it. Yields its gRPC and metrics ports."""
    port, metrics_port = free_port(), free_port()
    process = await start_server(
        settings,
        port,
        tmp_path / "server.log",
        UPLOAD_MEMORY_BUDGET_BYTES=str(10 * MiB),
        UPLOAD_MEMORY_WAIT_S="60",
        METRICS_ADDR=f"127.0.0.1:{metrics_port}",
    )
    try:
        yield port, metrics_port
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def test_the_memory_budget_holds_a_third_upload_back_until_one_finishes(
    budget_server: tuple[int, int], s3: Minio, bucket: str
) -> None:
    """Two uploads buffer 4.5 MiB each (a part is 5 MiB) and wait: they hold the whole budget,
    in 1 MiB granules. A third is admitted and waits for memory (what it sent meanwhile sits
    in gRPC's flow-control windows), until the first ends and gives its memory back; then it
    streams all of its 24 MiB in the half of the budget that is free, each part it stores
    freeing what it needs next."""
    port, metrics_port = budget_server
    files = [mp4_bytes(9 * MiB // 2, seed=0), mp4_bytes(9 * MiB // 2, seed=1), mp4_bytes(24 * MiB)]
    gates = [asyncio.Event() for _ in files]
    yielded = [0, 0, 0]

    async def stream(i: int) -> AsyncIterator[pb.UploadVideoRequest]:
        data = files[i]
        yield pb.UploadVideoRequest(
            metadata=pb.UploadMetadata(filename=f"{i}.mp4", sha256=sha256_hex(data))
        )
        for start in range(0, len(data), 256 * 1024):
            yielded[i] += 256 * 1024
            yield pb.UploadVideoRequest(chunk=data[start : start + 256 * 1024])
        await gates[i].wait()  # all sent, not ended: its bytes stay buffered

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)

        async def used() -> float:
            return (await scrape(metrics_port))["checkout_upload_memory_budget_bytes_used"]

        first = [asyncio.create_task(upload(stub, stream(i))) for i in (0, 1)]
        await wait_until(lambda: _equals(used, 10 * MiB), what="two uploads holding the budget")
        gates[2].set()
        third = asyncio.create_task(upload(stub, stream(2)))
        await wait_until(
            lambda: _in_flight(metrics_port, 3), what="the third upload admitted and waiting"
        )
        # Admitted and waiting for memory, not refused; the budget is never exceeded.
        print(f"memory budget: the third upload had sent {yielded[2] / MiB:.1f} MiB of 24")
        assert not third.done()
        assert await used() == 10 * MiB

        gates[0].set()  # the first ends and gives its memory back: the third goes on
        results = [await asyncio.wait_for(t, 120) for t in first[:1]]
        results.append(await asyncio.wait_for(third, 120))
        gates[1].set()
        results.append(await asyncio.wait_for(first[1], 120))
    assert yielded == [len(data) for data in files]
    for response, data in zip(results, [files[0], files[2], files[1]], strict=True):
        assert response.status == "ok"
        assert await object_sha256(s3, bucket, response.object_key) == (len(data), sha256_hex(data))
    assert await used() == 0


async def upload(stub: Any, requests: AsyncIterator[pb.UploadVideoRequest]) -> Any:
    return await stub.UploadVideo(requests, timeout=120)


async def _equals(value: Any, expected: float) -> bool:
    try:
        return bool(await value() == expected)
    except OSError:
        return False


async def _in_flight(metrics_port: int, n: int) -> bool:
    return (await scrape(metrics_port)).get("checkout_uploads_in_flight") == n
