"""Outbox relay throughput and latency, in one run, against real FerretDB and Kafka.

Starts its own FerretDB and Kafka (devstack) and `checkout-relay` as a separate process, then
1. idle: the relay's CPU use over a few seconds with nothing to do (from /proc);
2. burst: inserts N events at once and measures relayed events per second (first insert to
   last `sent`) and the new->sent latency of those events (mostly queueing);
3. trickle: inserts events at a steady rate well below capacity and measures the new->sent
   latency p50/p99 (the bound the relay promises while Kafka is up).

    python bench/relay_throughput.py [--events 20000] [--rate 200] [--seconds 10]

Two latencies (one clock: this machine's): *acked* = `sent_at - created_at` as stored (the
relay takes `sent_at` when Kafka acknowledged), and *visible* = when a poller here (every
25 ms, or twice its query time if longer) first saw the status record `sent`, minus
`created_at`: what a client sees, including the time the relay's writes take. Loopback only;
numbers vary with machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._events import bench_event
from checkout_server.config import RelaySettings
from checkout_server.outbox.document import Document, status_document, to_document
from devstack import FerretDB, Kafka, free_port
from devstack._stack import PythonService

TICKS = os.sysconf("SC_CLK_TCK")


def new_document() -> Document:
    return to_document(bench_event(datetime.now(UTC)))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class SentWatcher:
    """Polls the status records every 25 ms and notes when each event is first seen `sent`."""

    def __init__(self, statuses: AsyncCollection[Document]) -> None:
        self.statuses = statuses
        self.pending: set[str] = set()
        self.seen: dict[str, datetime] = {}

    async def run(self) -> None:
        while True:
            took = 0.0
            if self.pending:
                started = time.monotonic()
                query = {"_id": {"$in": list(self.pending)}, "status": "sent"}
                found = await self.statuses.find(query, {"_id": 1}).to_list()
                now = datetime.now(UTC)
                took = time.monotonic() - started
                for d in found:
                    self.seen[d["_id"]] = now
                    self.pending.discard(d["_id"])
            # FerretDB scans the collection for this query: keep the poller's own load on it
            # to at most a third, or it would slow down what it measures.
            await asyncio.sleep(max(0.025, 2 * took))

    async def wait_all(self, ids: list[str], timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while any(i not in self.seen for i in ids):
            if time.monotonic() > deadline:
                left = sum(i not in self.seen for i in ids)
                raise SystemExit(f"{left} events still not sent after {timeout_s}s")
            await asyncio.sleep(0.01)
        return time.monotonic()


async def latencies_ms(
    statuses: AsyncCollection[Document], ids: list[str], seen: dict[str, datetime]
) -> tuple[list[float], list[float]]:
    found = statuses.find({"_id": {"$in": ids}}, {"created_at": 1, "sent_at": 1})
    documents = await found.to_list()
    acked = [(d["sent_at"] - d["created_at"]).total_seconds() * 1000 for d in documents]
    visible = [(seen[d["_id"]] - d["created_at"]).total_seconds() * 1000 for d in documents]
    return acked, visible


async def wait_settled(leases: AsyncCollection[Document], timeout_s: float = 60) -> None:
    """Idle means settled: every shard leased (a starting relay takes them one by one)."""
    deadline = time.monotonic() + timeout_s
    shards = RelaySettings().relay_shards  # the relay runs with the default
    while len(await leases.distinct("shard", {"released": False})) < shards:
        if time.monotonic() > deadline:
            raise SystemExit(f"the relay did not lease all {shards} shards")
        await asyncio.sleep(0.1)


def summary(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):.0f} ms, p99 {percentile(values, 99):.0f} ms"


async def bench(args: argparse.Namespace, mongo_uri: str, relay_pid: int) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri, tz_aware=True)
    outbox = client["bench"]["outbox"]
    statuses = client["bench"]["event_statuses"]  # written beside each message, as the server does
    try:
        await wait_settled(client["bench"]["outbox_relay_leases"])
        cpu0, t0 = cpu_seconds(relay_pid), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        idle_cpu = (cpu_seconds(relay_pid) - cpu0) / (time.monotonic() - t0) * 100
        print(f"idle relay CPU: {idle_cpu:.2f}% of one core over {args.idle_seconds:.0f}s")

        watcher = SentWatcher(statuses)
        polling = asyncio.create_task(watcher.run())
        documents = [new_document() for _ in range(args.events)]
        ids = [d["_id"] for d in documents]
        watcher.pending.update(ids)
        started = time.monotonic()
        for start in range(0, len(documents), 1000):
            await outbox.insert_many(documents[start : start + 1000], ordered=False)
            records = [status_document(d) for d in documents[start : start + 1000]]
            await statuses.insert_many(records, ordered=False)
        inserted = time.monotonic()
        done = await watcher.wait_all(ids, timeout_s=600)
        acked, visible = await latencies_ms(statuses, ids, watcher.seen)
        print(
            f"burst of {args.events} events: inserted in {inserted - started:.2f}s, "
            f"all sent after {done - started:.2f}s -> "
            f"{args.events / (done - started):.0f} events/s; new->sent acked {summary(acked)}, "
            f"visible {summary(visible)} (queueing behind the burst)"
        )

        trickle_ids: list[str] = []
        interval = 1 / args.rate
        next_at = time.monotonic()
        end = next_at + args.seconds
        while time.monotonic() < end:
            document = new_document()
            watcher.pending.add(document["_id"])
            await outbox.insert_one(document)
            await statuses.insert_one(status_document(document))
            trickle_ids.append(document["_id"])
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await watcher.wait_all(trickle_ids, timeout_s=60)
        polling.cancel()
        acked, visible = await latencies_ms(statuses, trickle_ids, watcher.seen)
        print(
            f"steady {args.rate}/s for {args.seconds:.0f}s ({len(acked)} events): "
            f"new->sent acked {summary(acked)} (max {max(acked):.0f}, "
            f"mean {statistics.fmean(acked):.0f}); visible {summary(visible)} "
            f"(max {max(visible):.0f}; includes the poll interval)"
        )
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200.0, help="steady events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="steady phase length")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=1000, help="RELAY_BATCH_SIZE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        data = Path(tmp)
        ferretdb = FerretDB(port=free_port(), data_dir=data / "ferretdb", log_level="warn")
        kafka = Kafka(
            port=free_port(),
            controller_port=free_port(),
            data_dir=data / "kafka",
            log_path=data / "kafka.log",
        )
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
                "RELAY_BATCH_SIZE": str(args.batch),
                "LOG_LEVEL": "WARNING",
            },
            log_path=data / "relay.log",
        )
        try:
            ferretdb.start(120)
            kafka.start(120)
            relay.start(60)
            assert relay.pid is not None
            asyncio.run(bench(args, ferretdb.uri, relay.pid))
        finally:
            relay.stop()
            kafka.stop()
            ferretdb.stop()


if __name__ == "__main__":
    main()
