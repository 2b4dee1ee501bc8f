"""What each query of the service costs as the collections grow, on the MongoDB-compatible
server at hand.

Fills the outbox and the status records with N events through the service's own adapters
(three quarters `sent`, half of them `ready`, 500 `new`), runs every query the server and the
relay make, and prints each one's time at N next to its time at a small peer size measured in
the same run. The ratio shows how a query scales: near 1 means an index serves it, near
N / small means the server reads the whole collection.

    python bench/ferretdb_queries.py [--events 100000] [--small 1000] [--mongo-uri URI]

Without --mongo-uri it starts its own FerretDB (SQLite) from devstack. Point it at another
server (FerretDB over PostgreSQL, MongoDB) to compare backends.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._events import BATCH, bench_event, store_records
from checkout_server.adapters.mongo_outbox import MongoOutbox
from checkout_server.adapters.mongo_relay_store import MongoOutboxRelayStore
from checkout_server.adapters.mongo_status_records import MongoStatusRecords
from checkout_server.domain import EventStatus, OutboxEvent
from checkout_server.outbox.document import Document, to_document
from devstack import FerretDB, free_port

UNSENT = 500


def events(count: int) -> list[OutboxEvent]:
    start = datetime.now(UTC) - timedelta(hours=5)
    made = []
    for i in range(count):
        at = start + timedelta(milliseconds=10 * i)
        status = EventStatus.NEW if i >= count - UNSENT else EventStatus.SENT
        made.append(bench_event(at, status, ready_at=at if i < count // 2 else None))
    return made


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def measure(client: AsyncMongoClient[Document], count: int) -> dict[str, float]:
    database = client[f"bench_{count}"]
    await database.drop_collection("outbox")
    await database.drop_collection("event_statuses")
    outbox = MongoOutbox(database["outbox"], database["event_statuses"])
    records = MongoStatusRecords(database["event_statuses"])
    relay = MongoOutboxRelayStore(database["outbox"], database["event_statuses"])
    await outbox.ensure_indexes()
    await records.ensure_indexes()
    await relay.ensure_indexes()
    made = events(count)
    for start in range(0, count, BATCH):
        await database["outbox"].insert_many([to_document(e) for e in made[start : start + BATCH]])
    await store_records(database["event_statuses"], made)
    some = made[count // 3]
    unsent = [e.event_id for e in made[-UNSENT:]]

    async def page(status: EventStatus | None = None, after: str = "") -> list[OutboxEvent]:
        """One ListStatuses page as the service reads it: the count, then 50 events."""
        await records.count(status=status, owner=None)
        found = records.scan(status=status, owner=None, after=after, limit=51)
        return [e async for e in found if isinstance(e, OutboxEvent)]

    second = records.cursor_of((await page())[49])
    now = datetime.now(UTC)
    queries: dict[str, Callable[[], Awaitable[object]]] = {
        "GetStatus (_id)": lambda: outbox.get(some.event_id),
        "idempotency key lookup": lambda: outbox.find_by_idempotency_key(some.event_id, owner=""),
        "ListStatuses first page": lambda: page(),
        "ListStatuses next page": lambda: page(after=second),
        "ListStatuses status=sent": lambda: page(EventStatus.SENT),
        "watch feed (updated_at)": lambda: records.changed_since(
            now - timedelta(seconds=5), limit=500
        ),
        "results still awaited": lambda: records.unready(limit=1000),
        "relay: due events": lambda: relay.due([(0, 1024)], now, 200),
        "relay: mark 50 sent": lambda: relay.mark_sent(unsent[:50], now),
        # The sweeper's question for one page of input/ whose videos no event names (the
        # worst case: both collections are asked, nothing is found).
        "sweep: 1000 videos' events": lambda: outbox.videos_with_events(
            [str(uuid.uuid4()) for _ in range(1000)]
        ),
    }
    return {name: await timed(call) for name, call in queries.items()}


async def run(uri: str, small: int, large: int) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri, tz_aware=True, socketTimeoutMS=0)
    try:
        peer = await measure(client, small)
        big = await measure(client, large)
    finally:
        await client.close()
    print(f"{'query':28s} {small:>9,} ev {large:>9,} ev   ratio  (N ratio {large / small:.0f})")
    for name in big:
        ratio = big[name] / peer[name] if peer[name] else float("inf")
        print(f"{name:28s} {peer[name]:10.3f}s {big[name]:10.3f}s {ratio:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--mongo-uri", default="", help="an existing server instead of FerretDB")
    args = parser.parse_args()
    if args.mongo_uri:
        asyncio.run(run(args.mongo_uri, args.small, args.events))
        return
    with tempfile.TemporaryDirectory(prefix="ferretdb-queries-") as tmp:
        ferretdb = FerretDB(port=free_port(), data_dir=Path(tmp) / "ferretdb", log_level="warn")
        ferretdb.start(120)
        try:
            asyncio.run(run(ferretdb.uri, args.small, args.events))
        finally:
            ferretdb.stop()


if __name__ == "__main__":
    main()
