"""How late a watcher learns of `sent` and `ready` (issue 25's targets), against a bare Kafka
consumer on the same broker, at a given number of stored events.

    python -m bench.status_latency [--events 100000] [--uploads 40] [--watchers 1000]
        [--all-watchers 0] [--no-status-topic]

Starts `make run`'s stack without the detection runner (devstack's LocalStack: FerretDB,
MinIO, Kafka, the server, the relay, Envoy) on free ports and writes `--events` status records
straight into the collection, as earlier uploads leave them. The measured watcher is an
all-events WatchStatus stream opened before the uploads (as a client following its uploads
holds one); `--watchers` more, each of a stored event waiting for its result (as clients
each following their own video), and `--all-watchers` all-events ones (each gets every
change) are held meanwhile. Then, `--uploads` times, one after the other:

1. an UploadVideo of a small MP4, timed from its answer;
2. when the measured watcher first shows the event `sent` is "sent seen"; a WatchStatus of
   the event opened at the answer shows it too ("by a watch opened after": that includes its
   read of the event's record when it subscribes, on FerretDB a read that grows with the
   collection);
3. the peer: a consumer of the videos topic with no group, reading from the end, which
   notes when the relay's record of the event arrives ("record in Kafka");
4. the event's result JSON is put into MinIO, as a detection runner does, and the measured
   watcher's first `ready` after it is "ready seen", timed from the put's answer. Every other
   upload's result is then announced on the status topic, as the reference runner does (its
   KafkaResultAnnouncer); the others' are not, as a runner that only writes the JSON (the
   slow path: found by the reconcile, or by the checks of a watched event). The peer of the
   announced: a consumer of the status topic noting the announcement.

`--no-status-topic` runs the stack without STATUS_TOPIC: the watchers are then served by
the database poll, woken by UDP (the fallback while Kafka is down).

Prints p50 / p99 of each (nearest rank), the ratio of `sent seen` to its peer, and the
server's database reads on the watch path (its `checkout_watch_database_reads_total`) per
status change. A call that does not complete within `--timeout` counts with that time.
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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._events import BUCKET, bench_event, store_records
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_common import status_message
from checkout_runner.adapters.kafka_announcer import KafkaResultAnnouncer
from checkout_server.config import RelaySettings, ServerSettings
from checkout_server.domain import EventStatus, OutboxEvent
from devstack._stack import LocalStack, StackPorts
from tests.helpers import mp4_bytes, runner_event


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> str:
    return f"p50 {p(values, 0.5):.1f} ms, p99 {p(values, 0.99):.1f} ms"


async def store_events(uri: str, count: int, spread: timedelta = timedelta(days=30)) -> list[str]:
    """`count` status records of earlier uploads made evenly over the `spread` before now (a
    listing reads them an hour at a time), most of them `sent`, a tenth `ready`; the ids of
    those waiting for a result."""
    settings = ServerSettings()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True)
    start = datetime.now(UTC) - spread
    step = spread / max(count, 1)
    waiting: list[str] = []

    def made() -> Iterator[OutboxEvent]:
        for i in range(count):
            at = start + step * i
            status = EventStatus.NEW if i % 50 == 0 else EventStatus.SENT
            event = bench_event(at, status, ready_at=at if i % 10 == 0 else None)
            if event.ready_at is None:
                waiting.append(event.event_id)
            yield event

    await store_records(client[settings.mongo_db][settings.mongo_status_collection], made())
    await client.close()
    return waiting


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
    """The bare consumer: when each key (event id) first arrived on `topic` (in a record of
    `kind` only, when given: a status topic record's type)."""

    def __init__(self, bootstrap: str, topic: str, kind: str = "") -> None:
        self.arrived = FirstSeen()  # event ids, as the records' keys
        self._kind = kind
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="latest"
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
                    if record.key is None:
                        continue
                    if self._kind:
                        fields = status_message.decode(record.value)
                        if fields is None or fields["type"] != self._kind:
                            continue
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
        self.seen = FirstSeen()  # "<event id> <status>"
        self.answered = asyncio.Event()  # the first update (the current status) came
        self._call = call
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for update in self._call:
            self.answered.set()
            if not update.heartbeat:
                self.seen.note(f"{update.event_id} {update.status}")

    async def stop(self) -> None:
        self._call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def database_reads(metrics_port: int) -> float:
    """The server's watch-path database reads so far (its metrics endpoint)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
    ):
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("checkout_watch_database_reads_total{")
    )


async def measure(args: argparse.Namespace, stack: LocalStack, waiting: list[str]) -> None:
    ports = stack.ports
    bootstrap = f"127.0.0.1:{ports.kafka}"
    status_topic = ServerSettings().status_topic
    peer = Peer(bootstrap, RelaySettings().kafka_topic)
    announced = Peer(bootstrap, status_topic, status_message.RESULT_WRITTEN)
    await peer.start()
    await announced.start()
    runner = KafkaResultAnnouncer(
        lambda: AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all"),
        topic=status_topic,
        timeout_s=args.timeout,
    )
    s3 = Minio(f"127.0.0.1:{ports.minio}", "minioadmin", "minioadmin", secure=False)
    sent_seen: list[float] = []
    sent_seen_opened_after: list[float] = []
    in_kafka: list[float] = []
    ready_seen: list[float] = []
    announcement_in_kafka: list[float] = []
    unannounced_ready_seen: list[float] = []
    missed = 0  # statuses a watcher did not see within --timeout
    data = mp4_bytes(8000)
    held: list[Watch] = []
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as crowd,
        ):
            stub = pb_grpc.CheckoutServiceStub(channel)
            # The other watchers: all-events streams, each reading every change.
            others = pb_grpc.CheckoutServiceStub(crowd)
            held = [
                Watch(others.WatchStatus(pb.WatchStatusRequest(event_id=event_id)))
                for event_id in waiting[: args.watchers]
            ] + [
                Watch(others.WatchStatus(pb.WatchStatusRequest())) for _ in range(args.all_watchers)
            ]
            # Held, not subscribing: each single-event watch has read its event's record.
            started = time.monotonic()
            await asyncio.gather(*(w.answered.wait() for w in held[: args.watchers]))
            if held:
                print(f"{len(held)} watchers held after {time.monotonic() - started:.0f} s")
            # The measured watcher: every event, subscribed before the uploads.
            resident = Watch(stub.WatchStatus(pb.WatchStatusRequest()))
            held.append(resident)
            reads_before = await database_reads(ports.metrics)
            for n in range(args.uploads):
                messages = [
                    pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename=f"l{n}.mp4")),
                    pb.UploadVideoRequest(chunk=data),
                ]
                uploaded = await stub.UploadVideo(iter(messages), timeout=args.timeout)
                answered = time.monotonic()
                deadline = answered + args.timeout
                event_id = uploaded.event_id
                watch = Watch(stub.WatchStatus(pb.WatchStatusRequest(event_id=event_id)))
                sent_at = await resident.seen.when(f"{event_id} sent", deadline)
                sent_seen.append((sent_at - answered) * 1000)
                missed += sent_at >= deadline
                opened_after = await watch.seen.when(f"{event_id} sent", deadline)
                sent_seen_opened_after.append((opened_after - answered) * 1000)
                arrived = await peer.arrived.when(uploaded.event_id, deadline)
                in_kafka.append((arrived - answered) * 1000)

                key = f"output/{uploaded.video_id}.json"
                body = json.dumps({"status": "ok", "event_id": uploaded.event_id}).encode()
                await s3.put_object(BUCKET, key, io.BytesIO(body), len(body))
                written = time.monotonic()
                if n % 2 == 0:  # as the reference runner does
                    await runner.announce(runner_event(event_id, uploaded.video_id, BUCKET), key)
                ready_at = await resident.seen.when(f"{event_id} ready", written + args.timeout)
                latencies = ready_seen if n % 2 == 0 else unannounced_ready_seen
                latencies.append((ready_at - written) * 1000)
                missed += ready_at >= written + args.timeout
                if n % 2 == 0:
                    noted = await announced.arrived.when(uploaded.event_id, written + args.timeout)
                    announcement_in_kafka.append((noted - written) * 1000)
                await watch.stop()
            reads = await database_reads(ports.metrics) - reads_before
    finally:
        for watcher in held:
            await watcher.stop()
        await runner.close()
        await peer.stop()
        await announced.stop()
        await s3.close_session()  # type: ignore[no-untyped-call]

    print(
        f"{args.uploads} uploads over {args.events:,} stored events, one at a time, "
        f"{args.watchers} watchers of other events and {args.all_watchers} of all held:"
    )
    print(f"  record in Kafka (the peer):   {summary(in_kafka)}")
    print(f"  sent seen by a watcher:       {summary(sent_seen)}")
    print(f"  ... by a watch opened after:  {summary(sent_seen_opened_after)} (reads the record)")
    print(f"  announcement in Kafka (peer): {summary(announcement_in_kafka)} after the put")
    print(f"  ready seen (announced):       {summary(ready_seen)} after the put")
    print(f"  ready seen (not announced):   {summary(unannounced_ready_seen)} after the put")
    ratio = p(sent_seen, 0.99) / max(p(in_kafka, 0.99), 0.001)
    print(f"  sent p99 / peer p99: {ratio:.1f}; not seen within {args.timeout:g} s: {missed}")
    changes = 3 * args.uploads  # new, sent, ready
    print(f"  watch-path database reads: {reads:g} for {changes} status changes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="stored events (100,000)")
    parser.add_argument("--uploads", type=int, default=40, help="measured uploads (40)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per step, s (30)")
    parser.add_argument(
        "--watchers", type=int, default=0, help="watchers of stored events waiting, held (0)"
    )
    parser.add_argument("--all-watchers", type=int, default=0, help="all-events ones held (0)")
    parser.add_argument(
        "--no-status-topic",
        action="store_true",
        help="STATUS_TOPIC empty: watchers served by the database (the fallback)",
    )
    args = parser.parse_args()
    # The held watchers are one client's: let it have them all.
    held = args.watchers + args.all_watchers
    limit = str(max(256, held + 16))
    env = {
        "LOG_LEVEL": "WARNING",
        "WATCH_MAX_WATCHERS_PER_CLIENT": limit,
        "WATCH_MAX_WATCHERS": str(max(4096, held + 16)),
    }
    if args.no_status_topic:
        env["STATUS_TOPIC"] = ""
    with tempfile.TemporaryDirectory(prefix="status-latency-") as tmp:
        stack = LocalStack(Path(tmp) / "stack", StackPorts.free(), app_env=env)
        try:
            stack.start()
            started = time.monotonic()
            waiting = asyncio.run(store_events(stack.ferretdb.uri, args.events))
            print(f"stored {args.events:,} events in {time.monotonic() - started:.0f} s")
            if stack.ferretdb.postgres is not None:
                # What autovacuum does within a minute of a bulk load: until then PostgreSQL
                # plans without statistics (and scans rather than use the equality indexes).
                stack.ferretdb.postgres.run_sql("ANALYZE")
            asyncio.run(measure(args, stack, waiting))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
