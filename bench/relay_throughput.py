"""Outbox relay throughput, round trips, idle CPU and latency, each against a peer in one run.

    python bench/relay_throughput.py [--events 1000] [--history 900] [--batch 200]
    python bench/relay_throughput.py --stack [--rate 20] [--seconds 30] [--idle-seconds 30]

Default (relay mode): starts its own FerretDB and Kafka (devstack) and `checkout-relay` as a
separate process, then
1. burst: fills two databases of the same FerretDB with the same events, `--history` sent
   a minute ago and `--events` new ones, and drains one with our relay and the other with a
   *seed-style worker* (find 200 `new`, send them with acks=all, one `update_many` with
   `$in`; one collection), and prints both rates and their ratio. Each database holds what
   its way leaves behind: the peer all its messages in one collection; ours a status record
   per event and outbox messages for the new ones only (the relay deletes messages as it
   marks them sent, by default); `--same-outbox` puts the sent ones in our outbox too;
2. round trips: drains `--events` more through a relay built in this process on a client
   with PyMongo command monitoring, and prints the database commands per relayed event.

`--stack`: starts the whole `make run` stack (LocalStack, on free ports) and measures
1. steady: `--rate` real uploads per second (UploadVideo, gRPC) for `--seconds`, with a Kafka
   consumer; latency = the message's arrival at the consumer minus the upload's answer;
2. idle: then, 10 s later, the CPU of FerretDB, the relay and the server over
   `--idle-seconds` (from /proc), with the steady phase's events still in the stack;
3. idle, watched: the same with one WatchStatus stream of every event open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._events import bench_event
from bench._proc import tree_cpu_seconds
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.adapters.mongo_relay_store import MongoLeaseStore, MongoOutboxRelayStore
from checkout_server.adapters.udp_wake import WakeSender, WakeSigner
from checkout_server.config import RelaySettings
from checkout_server.outbox.document import Document, status_document, to_document
from checkout_server.relay.leases import LeaseManager, SystemClock
from checkout_server.relay.metrics import RelayMetrics
from checkout_server.relay.relay import Relay, RelayConfig
from checkout_server.supervisor import Supervisor
from checkout_server.wiring.clients import events_publisher
from devstack import FerretDB, Kafka, free_port
from devstack._stack import LocalStack, PythonService, StackPorts
from tests.helpers import mp4_bytes

SHARDS = RelaySettings().relay_shards  # the relay runs with the default

# Signs the bench's wake-ups as the relay it starts expects (WAKE_SECRET).
BENCH_WAKE_SECRET = secrets.token_hex(16)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(values: Sequence[float]) -> str:
    return (
        f"p50 {percentile(values, 50):.0f} ms, p99 {percentile(values, 99):.0f} ms, "
        f"max {max(values):.0f} ms"
    )


# --- filling the collections ----------------------------------------------------------------


def new_document(created_at: datetime | None = None) -> Document:
    return to_document(bench_event(created_at or datetime.now(UTC)))


async def fill(
    database: AsyncDatabase[Document], *, history: int, new: int, sent_in_outbox: bool = True
) -> list[str]:
    """`history` events sent a minute ago and `new` new ones, as the server and the relay
    leave them: a status record each, and an outbox message each, except for sent events
    when not `sent_in_outbox` (our relay deletes them as it marks them, by default).
    Returns the new events' ids."""
    long_ago = datetime.now(UTC) - timedelta(minutes=1)
    old = [new_document(long_ago) | {"status": "sent", "sent_at": long_ago} for _ in range(history)]
    fresh = [new_document() for _ in range(new)]
    documents = old + fresh
    messages = documents if sent_in_outbox else fresh
    for start in range(0, len(documents), 1000):
        chunk = documents[start : start + 1000]
        await database["event_statuses"].insert_many(
            [status_document(d) for d in chunk], ordered=False
        )
    for start in range(0, len(messages), 1000):
        await database["outbox"].insert_many(messages[start : start + 1000], ordered=False)
    return [str(d["_id"]) for d in fresh]


async def wait_sent(
    database: AsyncDatabase[Document], collection: str, count: int, timeout_s: float
) -> float:
    """Seconds until `count` messages of `collection` are `sent` (polled every 0.1 s, or at
    twice the query's own time on a slow backend, so the poller stays a small load)."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        began = time.monotonic()
        done = await database[collection].count_documents({"status": "new"}) == 0
        if done:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise SystemExit(f"{collection}: not all sent after {timeout_s}s")
        await asyncio.sleep(max(0.1, 2 * (time.monotonic() - began)))


# --- the peer: a seed-style worker ----------------------------------------------------------


async def seed_style_worker(
    database: AsyncDatabase[Document], bootstrap: str, topic: str, batch: int
) -> None:
    """The seed service's way: find `batch` new messages, send each with acks=all, then one
    `update_many` with `$in` marks them sent. One collection, no leases, no status records."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # the same topic shape as the relay's (3 partitions)
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        while True:
            found = database["outbox"].find({"status": "new"}).limit(batch).batch_size(batch)
            documents = await found.to_list()
            if not documents:
                return
            futures = [
                await producer.send(topic, key=str(d["_id"]).encode(), value=repr(d).encode())
                for d in documents
            ]
            await asyncio.gather(*futures)
            await database["outbox"].update_many(
                {"_id": {"$in": [d["_id"] for d in documents]}},
                {"$set": {"status": "sent", "sent_at": datetime.now(UTC)}},
            )
    finally:
        await producer.stop()


# --- command monitoring ---------------------------------------------------------------------


@dataclass
class CommandCounter(monitoring.CommandListener):
    """Counts the database commands a client sends, by name."""

    counts: Counter[str] = field(default_factory=Counter)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def round_trips(ferretdb: FerretDB, bootstrap: str, events: int, batch: int) -> None:
    """Drain `events` through a relay built here on a monitored client; print commands per
    event (the lease rebalance at start-up excluded: it is per relay, not per event)."""
    counter = CommandCounter()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        ferretdb.uri, tz_aware=True, event_listeners=[counter]
    )
    database = client["bench_round_trips"]
    clock = SystemClock()
    leases = LeaseManager(
        MongoLeaseStore(database["outbox_relay_leases"], database["outbox_relay_members"]),
        member="bench",
        shards=SHARDS,
        ttl_s=60,
        skew_s=2,
        clock=clock,
    )
    settings = RelaySettings(kafka_bootstrap_servers=bootstrap, kafka_topic="bench.round-trips")
    publisher = events_publisher(settings, member="bench")
    relay = Relay(
        # As the relay runs by default (RELAY_SENT_RETENTION_S=0): sent messages deleted.
        store=MongoOutboxRelayStore(
            database["outbox"],
            database["event_statuses"],
            keep_sent=False,
            update_chunk=update_chunk(ferretdb, batch),
        ),
        leases=leases,
        publisher=publisher,
        metrics=RelayMetrics(loop_failures=Counter()),
        config=RelayConfig(shards=SHARDS, batch_size=batch),
        clock=clock,
        supervisor=Supervisor(),
    )
    try:
        await fill(database, history=0, new=events)
        await publisher.start()
        await leases.rebalance()
        counter.counts.clear()
        handled = batches = empty = 0
        while handled < events:
            done, _ = await relay.step()
            if not done:  # events written a moment ago may not be due by this clock yet
                empty += 1
                if empty > 100:
                    raise SystemExit("round trips: the relay found nothing to do")
                await asyncio.sleep(0.05)
                continue
            handled += done
            batches += 1
        total = sum(counter.counts.values())
        detail = ", ".join(f"{name} {n}" for name, n in counter.counts.most_common())
        print(
            f"round trips: {total} database commands for {handled} events in {batches} batches"
            f" -> {total / handled:.3f} per event, {total / batches:.1f} per batch ({detail})"
        )
    finally:
        await publisher.close()
        await client.close()


# --- relay mode -----------------------------------------------------------------------------


async def relay_mode(args: argparse.Namespace, ferretdb: FerretDB, kafka: Kafka) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(ferretdb.uri, tz_aware=True)
    ours, peer = client["bench"], client["bench_seed_style"]
    try:
        await fill(ours, history=args.history, new=0, sent_in_outbox=args.same_outbox)
        await fill(peer, history=args.history, new=0)
        relay = start_relay(args, ferretdb, kafka)
        try:
            await wait_settled(ours)
            # The server wakes the relay after each outbox message: so does the bench.
            wake = WakeSender([f"127.0.0.1:{relay.port}"], WakeSigner(BENCH_WAKE_SECRET))
            started = time.monotonic()
            await fill(ours, history=0, new=args.events)
            wake()
            wake.close()
            await wait_sent(ours, "outbox", args.events, timeout_s=900)
            ours_s = time.monotonic() - started
        finally:
            relay.stop()
        started = time.monotonic()
        await fill(peer, history=0, new=args.events)
        await seed_style_worker(peer, kafka.bootstrap, "bench.seed-style", args.batch)
        peer_s = time.monotonic() - started
        ours_rate, peer_rate = args.events / ours_s, args.events / peer_s
        print(
            f"[{ferretdb.backend}] burst of {args.events} over {args.history} older events"
            f" ({'in both outboxes' if args.same_outbox else 'ours: status records only'}):"
            f" relay {ours_rate:.0f} events/s ({ours_s:.1f} s),"
            f" seed-style worker {peer_rate:.0f} events/s ({peer_s:.1f} s)"
            f" -> ratio {ours_rate / peer_rate:.2f}"
        )
    finally:
        await client.close()
    await round_trips(ferretdb, kafka.bootstrap, args.events, args.relay_batch)


def update_chunk(ferretdb: FerretDB, batch: int) -> int:
    """RELAY_UPDATE_CHUNK as devstack sets it: the batch over PostgreSQL, else the default."""
    return batch if ferretdb.backend == "postgresql" else RelaySettings().relay_update_chunk


async def wait_settled(database: AsyncDatabase[Document], timeout_s: float = 60) -> None:
    """The relay is settled once it holds every shard (a starting relay takes them one by
    one): the burst's clock then measures publishing, not start-up."""
    deadline = time.monotonic() + timeout_s
    leases = database["outbox_relay_leases"]
    while len(await leases.distinct("shard", {"released": False})) < SHARDS:
        if time.monotonic() > deadline:
            raise SystemExit(f"the relay did not lease all {SHARDS} shards")
        await asyncio.sleep(0.1)


def start_relay(args: argparse.Namespace, ferretdb: FerretDB, kafka: Kafka) -> PythonService:
    """`checkout-relay` as a process on database `bench`."""
    health_port = free_port()
    relay = PythonService(
        name="checkout-relay",
        module="checkout_server.wiring.relay",
        port=health_port,
        env={
            "MONGO_URI": ferretdb.uri,
            "MONGO_DB": "bench",
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "KAFKA_TOPIC": "bench.videos",
            "RELAY_HEALTH_ADDR": f"127.0.0.1:{health_port}",
            "RELAY_METRICS_ADDR": "",
            "WAKE_SECRET": BENCH_WAKE_SECRET,
            "RELAY_BATCH_SIZE": str(args.relay_batch),
            "RELAY_UPDATE_CHUNK": str(update_chunk(ferretdb, args.relay_batch)),
            "LOG_LEVEL": "WARNING",
        },
        log_path=args.work / "relay.log",
    )
    relay.start(60)
    return relay


# --- stack mode -----------------------------------------------------------------------------


async def stack_mode(args: argparse.Namespace, stack: LocalStack) -> None:
    pids = {
        "ferretdb": stack.ferretdb.pid,
        "relay": stack.relay.pid,
        "server": stack.server.pid,
    }
    if stack.ferretdb.postgres is not None:  # FerretDB's backend is part of FerretDB here
        pids["postgresql"] = stack.ferretdb.postgres.pid
    topic = RelaySettings().kafka_topic
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=f"127.0.0.1:{stack.ports.kafka}", auto_offset_reset="latest"
    )
    await consumer.start()
    arrived: dict[str, float] = {}
    answered: dict[str, float] = {}
    uploads_done = False
    all_arrived = asyncio.Event()

    async def consume() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    arrived.setdefault(record.key.decode(), now)
            if uploads_done and all(i in arrived for i in answered):
                all_arrived.set()

    # Assigned and positioned before the first upload (else "latest" may skip it).
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    for tp in consumer.assignment():
        await consumer.position(tp)
    reading = asyncio.create_task(consume())
    data = mp4_bytes(8000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.grpc}") as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)

        async def upload(seed: int) -> None:
            requests = [
                pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename=f"b{seed}.mp4")),
                pb.UploadVideoRequest(chunk=data),
            ]
            response = await stub.UploadVideo(iter(requests), timeout=30)
            answered[str(response.event_id)] = time.monotonic()

        tasks: list[asyncio.Task[None]] = []
        interval = 1 / args.rate
        next_at = time.monotonic()
        end = next_at + args.seconds
        seed = 0
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(upload(seed)))
            seed += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)
    uploads_done = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_arrived.wait(), 120)
    reading.cancel()
    await consumer.stop()
    missing = [i for i in answered if i not in arrived]
    latencies = [(arrived[i] - t) * 1000 for i, t in answered.items() if i in arrived]
    print(
        f"steady {args.rate:g} uploads/s for {args.seconds:.0f} s ({len(answered)} uploads):"
        f" upload answered -> message in Kafka {summary(latencies)},"
        f" mean {statistics.fmean(latencies):.0f} ms; {len(missing)} missing"
    )

    # Idle after the steady phase, as a stack that has worked sits: the relay has drained,
    # the events are waiting for results (no detection runner here), nothing else happens.
    await asyncio.sleep(10)
    running = {name: pid for name, pid in pids.items() if pid}
    await measure_idle("idle", running, args.idle_seconds)

    # The same with one watcher of every event: its change feed reads only when woken (or
    # at its 2 s safety net), so this is the peer of the line above, not 4 queries a second.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.grpc}") as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        call = stub.WatchStatus(pb.WatchStatusRequest())
        await call.wait_for_connection()
        await asyncio.sleep(2)  # the first look at the status records is done
        await measure_idle("idle, watched", running, args.idle_seconds)
        call.cancel()

        # Idle with nothing to do: every event's result in (as a detection runner writes
        # it), so no result is looked for any more; the lines above are the peers.
        s3 = Minio(f"127.0.0.1:{stack.ports.minio}", "minioadmin", "minioadmin", secure=False)
        limit = asyncio.Semaphore(16)

        async def finish(event_id: str) -> str:
            async with limit:
                body = json.dumps({"status": "ok", "event_id": event_id, "frames": []}).encode()
                await s3.put_object(
                    "videos", f"output/{event_id}.json", io.BytesIO(body), len(body)
                )
                got = await stub.GetStatus(pb.GetStatusRequest(event_id=event_id), timeout=30)
                return str(got.operation.status)

        try:
            statuses = await asyncio.gather(*(finish(i) for i in answered))
        finally:
            await s3.close_session()  # type: ignore[no-untyped-call]
        ready = statuses.count("ready")
        await asyncio.sleep(10)
        await measure_idle(f"idle, every result in ({ready} ready)", running, args.idle_seconds)


async def measure_idle(what: str, running: dict[str, int], seconds: float) -> None:
    cpu0 = {name: tree_cpu_seconds(pid) for name, pid in running.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    idle = {n: (tree_cpu_seconds(pid) - cpu0[n]) / elapsed * 100 for n, pid in running.items()}
    print(
        f"{what} over {elapsed:.0f} s: FerretDB + relay + server {sum(idle.values()):.2f} %"
        f" of a core ({', '.join(f'{n} {v:.2f} %' for n, v in idle.items())})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", action="store_true", help="measure make run's whole stack")
    parser.add_argument("--events", type=int, default=1000, help="burst size")
    parser.add_argument("--history", type=int, default=900, help="older sent events beside")
    parser.add_argument(
        "--same-outbox",
        action="store_true",
        help="the older events in our outbox too, as sent messages (not deleted as sent)",
    )
    parser.add_argument("--batch", type=int, default=200, help="the seed-style worker's batch")
    parser.add_argument(
        "--relay-batch",
        type=int,
        default=RelaySettings().relay_batch_size,
        help="RELAY_BATCH_SIZE (default: the relay's default)",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="steady uploads per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady phase length")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --stack: a setting of the server and the relay (repeatable), e.g. "
        "WATCH_POLL_INTERVAL_S=0.25 WATCH_POLL_MIN_GAP_S=0.25 for the feed's former polling",
    )
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql"], help="FerretDB's (default: devstack's)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        args.work = Path(tmp)
        if args.stack:
            if args.backend:
                os.environ["CHECKOUT_FERRETDB_BACKEND"] = args.backend
            stack = LocalStack(
                args.work / "stack",
                StackPorts.free(),
                app_env={"LOG_LEVEL": "WARNING", **dict(e.split("=", 1) for e in args.env)},
            )
            try:
                stack.start()
                asyncio.run(stack_mode(args, stack))
            finally:
                stack.stop()
            return
        ferretdb = FerretDB(
            port=free_port(),
            data_dir=args.work / "ferretdb",
            log_level="warn",
            backend=args.backend or None,
        )
        kafka = Kafka(
            port=free_port(),
            controller_port=free_port(),
            data_dir=args.work / "kafka",
            log_path=args.work / "kafka.log",
        )
        try:
            ferretdb.start(120)
            kafka.start(120)
            asyncio.run(relay_mode(args, ferretdb, kafka))
        finally:
            kafka.stop()
            ferretdb.stop()


if __name__ == "__main__":
    main()
