"""How late a watcher learns of `sent` and `ready` (issue 25's first targets), against a bare
Kafka consumer on the same broker, at a given number of stored events.

    python -m bench.status_latency [--events 100000] [--uploads 40]

Starts `make run`'s stack without the detection runner (devstack's LocalStack: FerretDB,
MinIO, Kafka, the server, the relay, Envoy) on free ports and writes `--events` status records
straight into the collection, as earlier uploads leave them. Then, `--uploads` times, one
after the other:

1. an UploadVideo of a small MP4, timed from its answer;
2. at once a WatchStatus of its event, read in the background: when it first shows `sent`
   is "sent seen";
3. the peer: a consumer of the videos topic with no group, reading from the end, which
   notes when the relay's record of the event arrives ("record in Kafka");
4. the event's result JSON is put into MinIO, as a detection runner does, and the watcher's
   first `ready` after it is "ready seen", timed from the put's answer.

Prints p50 / p99 of each (nearest rank) and the ratio of `sent seen` to its peer. A call that
does not complete within `--timeout` counts with that time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._events import BUCKET, bench_event
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import RelaySettings, ServerSettings
from checkout_server.domain import EventStatus
from checkout_server.outbox.document import status_document, to_document
from devstack._stack import LocalStack, StackPorts
from tests.helpers import mp4_bytes


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> str:
    return f"p50 {p(values, 0.5):.1f} ms, p99 {p(values, 0.99):.1f} ms"


async def store_events(uri: str, count: int) -> None:
    """`count` status records of earlier uploads, most of them `sent`, a tenth `ready`."""
    settings = ServerSettings()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True)
    collection = client[settings.mongo_db][settings.mongo_status_collection]
    start = datetime.now(UTC) - timedelta(days=1)
    batch = []
    for i in range(count):
        at = start + timedelta(milliseconds=i)
        status = EventStatus.NEW if i % 50 == 0 else EventStatus.SENT
        event = bench_event(at, status, ready_at=at if i % 10 == 0 else None)
        batch.append(status_document(to_document(event)))
        if len(batch) == 1000 or i == count - 1:
            await collection.insert_many(batch)
            batch = []
    await client.close()


class FirstSeen:
    """When each key was first noted (monotonic), and a wait for one that ends by a deadline."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._noted: dict[str, asyncio.Event] = {}

    def note(self, key: str) -> None:
        if key not in self.at:
            self.at[key] = time.monotonic()
            self._event(key).set()

    async def when(self, key: str, deadline: float) -> float:
        """When `key` was first noted; `deadline` if it was not by then."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event(key).wait(), max(0.0, deadline - time.monotonic()))
        return self.at.get(key, deadline)

    def _event(self, key: str) -> asyncio.Event:
        return self._noted.setdefault(key, asyncio.Event())


class Peer:
    """The bare consumer: when each key (event id) first arrived on the videos topic."""

    def __init__(self, bootstrap: str) -> None:
        self.arrived = FirstSeen()  # event ids, as the records' keys
        self._consumer = AIOKafkaConsumer(
            RelaySettings().kafka_topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="latest",
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        while not self._consumer.assignment():  # the relay made the topic at its start
            await self._consumer.getmany(timeout_ms=100)
        for partition in self._consumer.assignment():
            await self._consumer.position(partition)  # from the end, before any upload
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        self.arrived.note(record.key.decode())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


class Watch:
    """A WatchStatus stream read in the background: when it first showed each status."""

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, pb.StatusUpdate]) -> None:
        self.seen = FirstSeen()  # statuses
        self._call = call
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for update in self._call:
            if not update.heartbeat:
                self.seen.note(update.status)

    async def stop(self) -> None:
        self._call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def measure(args: argparse.Namespace, stack: LocalStack) -> None:
    ports = stack.ports
    peer = Peer(f"127.0.0.1:{ports.kafka}")
    await peer.start()
    s3 = Minio(f"127.0.0.1:{ports.minio}", "minioadmin", "minioadmin", secure=False)
    sent_seen: list[float] = []
    in_kafka: list[float] = []
    ready_seen: list[float] = []
    missed = 0  # statuses a watcher did not see within --timeout
    data = mp4_bytes(8000)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            for n in range(args.uploads):
                messages = [
                    pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename=f"l{n}.mp4")),
                    pb.UploadVideoRequest(chunk=data),
                ]
                uploaded = await stub.UploadVideo(iter(messages), timeout=args.timeout)
                answered = time.monotonic()
                deadline = answered + args.timeout
                watch = Watch(stub.WatchStatus(pb.WatchStatusRequest(event_id=uploaded.event_id)))
                sent_at = await watch.seen.when("sent", deadline)
                sent_seen.append((sent_at - answered) * 1000)
                missed += sent_at >= deadline
                arrived = await peer.arrived.when(uploaded.event_id, deadline)
                in_kafka.append((arrived - answered) * 1000)

                body = json.dumps({"status": "ok", "event_id": uploaded.event_id}).encode()
                await s3.put_object(
                    BUCKET, f"output/{uploaded.video_id}.json", io.BytesIO(body), len(body)
                )
                written = time.monotonic()
                ready_at = await watch.seen.when("ready", written + args.timeout)
                ready_seen.append((ready_at - written) * 1000)
                missed += ready_at >= written + args.timeout
                await watch.stop()
    finally:
        await peer.stop()
        await s3.close_session()  # type: ignore[no-untyped-call]

    print(f"{args.uploads} uploads over {args.events:,} stored events, one at a time:")
    print(f"  record in Kafka (the peer): {summary(in_kafka)}")
    print(f"  sent seen by a watcher:     {summary(sent_seen)}")
    print(f"  ready seen by a watcher:    {summary(ready_seen)} after the result's put")
    ratio = p(sent_seen, 0.99) / max(p(in_kafka, 0.99), 0.001)
    print(f"  sent p99 / peer p99: {ratio:.1f}; not seen within {args.timeout:g} s: {missed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="stored events (100,000)")
    parser.add_argument("--uploads", type=int, default=40, help="measured uploads (40)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per step, s (30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="status-latency-") as tmp:
        stack = LocalStack(Path(tmp) / "stack", StackPorts.free(), app_env={"LOG_LEVEL": "WARNING"})
        try:
            stack.start()
            started = time.monotonic()
            asyncio.run(store_events(stack.ferretdb.uri, args.events))
            print(f"stored {args.events:,} events in {time.monotonic() - started:.0f} s")
            asyncio.run(measure(args, stack))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
