"""ListStatuses over many events, and WatchStatus fan-out, against a real server process.

    python bench/status_watch.py [--events 100000] [--watchers 1000]

Starts FerretDB and MinIO (devstack) and the checkout server as a process, inserts
`--events` outbox documents directly (as uploads would leave them), then measures:
- ListStatuses: latency of the first page, of a page deep in the listing (following
  next_page_token), and with a status filter, each the median of several calls;
- WatchStatus: `--watchers` streams on one event; the result is written and the delay until
  each watcher sees `ready` is recorded (p50/p99), with the server's CPU time over the run,
  and the server's outbox query count is compared with a run of one watcher.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._backends import Backends, started
from bench._events import BUCKET, bench_event, store_records
from bench._proc import cpu_seconds
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.domain import EventStatus, OutboxEvent


async def insert_events(uri: str, count: int) -> list[str]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True)
    start = datetime.now(UTC) - timedelta(days=1)
    ids: list[str] = []

    def made() -> Iterator[OutboxEvent]:
        for i in range(count):
            at = start + timedelta(milliseconds=i)
            status = (EventStatus.NEW, EventStatus.SENT, EventStatus.SENT, EventStatus.SENT)[i % 4]
            event = bench_event(at, status, ready_at=at if i % 10 == 0 else None)
            ids.append(event.event_id)
            yield event

    # The status records the API reads.
    await store_records(client["main_db"]["event_statuses"], made())
    await client.close()
    return ids


async def timed(call: object) -> float:
    started = time.perf_counter()
    await call  # type: ignore[misc]
    return (time.perf_counter() - started) * 1000


async def bench_list(stub: pb_grpc.CheckoutServiceAsyncStub, events: int) -> None:
    first = [await timed(stub.ListStatuses(pb.ListStatusesRequest())) for _ in range(5)]
    # Walk 20 pages of 1000 in, then time the next page.
    token = ""
    skipped = min(20, events // 1000 - 1)
    for _ in range(skipped):
        page = await stub.ListStatuses(pb.ListStatusesRequest(page_size=1000, page_token=token))
        token = page.next_page_token
    deep = [
        await timed(stub.ListStatuses(pb.ListStatusesRequest(page_token=token))) for _ in range(5)
    ]
    filtered = [
        await timed(stub.ListStatuses(pb.ListStatusesRequest(status="new"))) for _ in range(5)
    ]
    response = await stub.ListStatuses(pb.ListStatusesRequest())
    print(f"ListStatuses over {events} events (100 per page, median of 5):")
    print(f"  first page {statistics.median(first):.1f} ms, total={response.total}")
    print(f"  page after {skipped * 1000:,} events {statistics.median(deep):.1f} ms")
    print(f"  status=new filter {statistics.median(filtered):.1f} ms")
    print(f"  response size {response.ByteSize()} bytes")


async def bench_watch(
    port: int, pid: int, s3: Minio, event_id: str, watchers: int
) -> tuple[float, float, float]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(10)]
    stubs = [pb_grpc.CheckoutServiceStub(c) for c in channels]
    request = pb.WatchStatusRequest(event_id=event_id)
    subscribed = 0
    all_subscribed = asyncio.Event()
    seen: list[float] = []

    async def watch(stub: pb_grpc.CheckoutServiceAsyncStub) -> None:
        nonlocal subscribed
        async for update in stub.WatchStatus(request):
            if update.heartbeat:
                continue
            if update.status != "ready":
                subscribed += 1
                if subscribed == watchers:
                    all_subscribed.set()
            else:
                seen.append(time.monotonic())

    tasks = [asyncio.create_task(watch(stubs[i % len(stubs)])) for i in range(watchers)]
    await asyncio.wait_for(all_subscribed.wait(), 120)
    cpu_before = cpu_seconds(pid)
    written = time.monotonic()
    await s3.put_object(BUCKET, f"output/{event_id}.json", io.BytesIO(b"{}"), 2)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    wall = time.monotonic() - written
    cpu = cpu_seconds(pid) - cpu_before
    for channel in channels:
        await channel.close(None)
    delays = sorted(t - written for t in seen)
    return delays[len(delays) // 2], delays[int(len(delays) * 0.99) - 1], cpu / wall


async def run(args: argparse.Namespace, work: Path) -> None:
    with started(work) as backends:
        await measure(args, backends)


async def measure(args: argparse.Namespace, backends: Backends) -> None:
    port, pid = backends.server.port, backends.server_pid
    endpoint = backends.minio.endpoint
    s3 = Minio(endpoint, access_key="minioadmin", secret_key="minioadmin", secure=False)
    try:
        began = time.monotonic()
        ids = await insert_events(backends.ferretdb.uri, args.events)
        print(f"inserted {args.events} events in {time.monotonic() - began:.1f} s")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: pb_grpc.CheckoutServiceAsyncStub = pb_grpc.CheckoutServiceStub(channel)
            await bench_list(stub, args.events)
        for watchers, event_id in ((1, ids[1]), (args.watchers, ids[2])):
            p50, p99, cores = await bench_watch(port, pid, s3, event_id, watchers)
            print(
                f"WatchStatus, {watchers} watcher(s) of one event: ready delivered "
                f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; server CPU {cores:.2f} cores"
            )
    finally:
        await s3.close_session()  # type: ignore[no-untyped-call]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--watchers", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checkout-bench-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
