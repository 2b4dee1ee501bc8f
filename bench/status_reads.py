"""GetStatus and ListStatuses over many stored events, against a real server process, each
next to a peer measured in the same run.

    python bench/status_reads.py [--events 100000] [--callers 16] [--calls 2000]
                                 [--spread-days 30] [--rounds 2] [--only-lookups]

Starts FerretDB (PostgreSQL where installed) and MinIO (devstack) and the checkout server as
a process, and inserts `--events` status records directly, as uploads leave them: created
evenly over the last `--spread-days` days, three quarters `sent`, every tenth ready. Then:
- **GetStatus**: `--callers` concurrent callers make `--calls` calls in all, each for a random
  stored event (one waiting for its result checks storage for it, within the server's
  RESULT_CHECK_RATE_PER_S), then for a random ready one (no check). Three peers, with the same
  callers: the simplest correct GetStatus server (bench/_bare_status.py: grpc.aio and a
  PyMongo `find_one`, nothing else) over the same database; grpc.health.v1 Health/Check on
  the service (the server without the database); and `find_one` by `_id` from the bench (the
  database without a server). Prints p50 and p99, calls/s, and the CPU time each process
  spent per call, the bench's own included: on this machine's cores their sum bounds the
  rate, and with the callers the latency. Each server is first warmed at the callers'
  concurrency; then GetStatus, GetStatus of ready events and the bare server run `--rounds`
  times in turn (the machine's load varies), and GetStatus's p99 over the bare server's is
  printed for each round.
- **ListStatuses**: the first page (100), 20 calls one after another, p50 and p99; a page
  1,000 events deep; `status=failed` (few match); and the original service's `status/all`
  (no page size: every event up to 10,000), its time and size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._backends import Backends, started
from bench._events import bench_event, store_records
from bench._proc import tree_cpu_seconds
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.domain import EventStatus, OutboxEvent
from devstack import free_port
from devstack._stack import PythonService

BARE = "GetStatus of the bare server (peer: the simplest correct server)"


async def insert_events(uri: str, count: int, spread: timedelta) -> list[str]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True)
    start = datetime.now(UTC) - spread
    step = spread / max(count, 1)
    ids: list[str] = []

    def made() -> Iterator[OutboxEvent]:
        for i in range(count):
            at = start + step * i
            status = (EventStatus.NEW, EventStatus.SENT, EventStatus.SENT, EventStatus.SENT)[i % 4]
            event = bench_event(at, status, ready_at=at if i % 10 == 0 else None)
            ids.append(event.event_id)
            yield event

    # The status records the API reads.
    await store_records(client["main_db"]["event_statuses"], made())
    await client.close()
    return ids


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


async def concurrently(
    callers: int, calls: int, call: Callable[[], Awaitable[object]]
) -> tuple[float, float, float]:
    """p50 and p99 in ms, and calls per second, of `calls` calls made by `callers` loops."""
    samples: list[float] = []
    left = calls

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            began = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(callers)))
    wall = time.perf_counter() - began
    p50, p99 = percentiles(samples)
    return p50, p99, len(samples) / wall


async def sequential(times: int, call: Callable[[], Awaitable[object]]) -> str:
    """p50, p99 and the first of `times` calls one after another (the first may pay for what
    the server then remembers: a slow count), or how the first failed call failed."""
    samples = []
    for _ in range(times):
        began = time.perf_counter()
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            spent = time.perf_counter() - began
            return f"refused {exc.code().name} after {spent:.1f} s ({exc.details()})"
        samples.append((time.perf_counter() - began) * 1000)
    p50, p99 = percentiles(samples)
    return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, the first {samples[0]:.0f} ms"


@contextlib.contextmanager
def bare_server(backends: Backends, work: Path) -> Iterator[PythonService]:
    """The simplest correct GetStatus server (bench/_bare_status.py) over the same database,
    started; stopped after."""
    port = free_port()
    server = PythonService(
        name="bare-status",
        module="bench._bare_status",
        port=port,
        env={
            "MONGO_URI": backends.ferretdb.uri,
            "GRPC_ADDR": f"127.0.0.1:{port}",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        },
        log_path=work / "bare-status.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def measure(args: argparse.Namespace, backends: Backends, work: Path) -> None:
    began = time.monotonic()
    ids = await insert_events(backends.ferretdb.uri, args.events, timedelta(days=args.spread_days))
    print(
        f"{args.events:,} events over {args.spread_days} days inserted in"
        f" {time.monotonic() - began:.0f} s (FerretDB over {backends.ferretdb.backend})"
    )
    if backends.ferretdb.postgres is not None:
        # What autovacuum does within a minute of a bulk load, done before the measurement
        # rather than during it: until then PostgreSQL plans without statistics (and scans
        # rather than use the equality indexes).
        backends.ferretdb.postgres.run_sql("VACUUM ANALYZE")
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        backends.ferretdb.uri, tz_aware=True
    )
    records = client["main_db"]["event_statuses"]
    async with (
        contextlib.AsyncExitStack() as stack,
        grpc.aio.insecure_channel(f"127.0.0.1:{backends.server.port}") as channel,
    ):
        bare = stack.enter_context(bare_server(backends, work))
        bare_channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{bare.port}")
        )
        stub: pb_grpc.CheckoutServiceAsyncStub = pb_grpc.CheckoutServiceStub(channel)
        bare_stub: pb_grpc.CheckoutServiceAsyncStub = pb_grpc.CheckoutServiceStub(bare_channel)
        health: health_pb2_grpc.HealthAsyncStub = health_pb2_grpc.HealthStub(channel)

        def lookup(
            of: pb_grpc.CheckoutServiceAsyncStub, among: list[str] = ids
        ) -> Callable[[], Awaitable[object]]:
            return lambda: of.GetStatus(pb.GetStatusRequest(event_id=random.choice(among)))

        for warm in (stub, bare_stub):
            # Warmed at the callers' concurrency: each server's connection pool (and
            # FerretDB's to PostgreSQL) grows to it before anything is measured.
            await concurrently(args.callers, args.calls // 4, lookup(warm))

        get_status = lookup(stub)
        get_ready = lookup(stub, ids[::10])  # no storage check: their result is recorded
        get_bare = lookup(bare_stub)

        async def check() -> object:
            return await health.Check(health_pb2.HealthCheckRequest())

        async def find_one() -> object:
            return await records.find_one({"_id": random.choice(ids)})

        lookups = (
            ("GetStatus", get_status),
            ("GetStatus of ready events", get_ready),
            (BARE, get_bare),
        )
        p99s: dict[str, list[float]] = {}
        for name, call in (
            *(lookups * args.rounds),
            ("Health/Check (peer: the server without the database)", check),
            ("find_one by _id (peer: the database without the server)", find_one),
        ):
            pids = backends.pids() | {"bare server": bare.pid or 0}
            pids = {n: pid for n, pid in pids.items() if pid}
            cpu = {n: tree_cpu_seconds(pid) for n, pid in pids.items()} | {
                "bench": time.process_time()
            }
            p50, p99, rate = await concurrently(args.callers, args.calls, call)
            p99s.setdefault(name, []).append(p99)
            used = {n: tree_cpu_seconds(pid) for n, pid in pids.items()} | {
                "bench": time.process_time()
            }
            per_call = {n: (used[n] - cpu[n]) * 1000 / args.calls for n in cpu}
            spent = ", ".join(f"{n} {ms:.2f}" for n, ms in per_call.items() if ms >= 0.005)
            print(
                f"{name}, {args.callers} callers: p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
                f" {rate:,.0f} calls/s; CPU ms a call: {spent}, in all"
                f" {sum(per_call.values()):.2f}"
            )

        ratios = ", ".join(
            f"{mine / peer:.2f}" for mine, peer in zip(p99s["GetStatus"], p99s[BARE], strict=True)
        )
        print(f"GetStatus p99 / the bare server's, each round: {ratios}")
        await client.close()
        if args.only_lookups:
            return
        first = await sequential(
            20, lambda: stub.ListStatuses(pb.ListStatusesRequest(page_size=100))
        )
        print(f"ListStatuses first page: {first}")
        token = ""
        with contextlib.suppress(grpc.aio.AioRpcError):
            token = (
                await stub.ListStatuses(pb.ListStatusesRequest(page_size=1000))
            ).next_page_token
        deep = await sequential(
            5, lambda: stub.ListStatuses(pb.ListStatusesRequest(page_token=token))
        )
        print(f"ListStatuses, a page 1,000 deep: {deep}")
        failed = await sequential(
            5, lambda: stub.ListStatuses(pb.ListStatusesRequest(page_size=100, status="failed"))
        )
        print(f"ListStatuses status=failed: {failed}")
        began = time.perf_counter()
        try:
            everything = await stub.ListStatuses(pb.ListStatusesRequest(), timeout=120)
        except grpc.aio.AioRpcError as exc:
            print(
                f"status/all: refused {exc.code().name} after {time.perf_counter() - began:.1f} s"
            )
        else:
            print(
                f"status/all: {len(everything.operations):,} operations,"
                f" total {everything.total:,}, {everything.ByteSize() / 1e6:.1f} MB"
                f" in {time.perf_counter() - began:.1f} s"
            )


async def run(args: argparse.Namespace, work: Path) -> None:
    with started(work) as backends:
        await measure(args, backends, work)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--spread-days", type=float, default=30)
    parser.add_argument("--only-lookups", action="store_true", help="skip the listings")
    parser.add_argument(
        "--rounds", type=int, default=2, help="the lookups and their peer, one after another"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checkout-bench-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
