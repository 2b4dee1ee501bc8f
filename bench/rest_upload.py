"""REST uploads through Envoy against their peers, in one run on one local stack.

    python bench/rest_upload.py [--small 200] [--parallel 16] [--rounds 3] [--drain 2000]
                                [--size-mib 64 256 1024]

1. Small uploads (the seed's clients: `curl -F file=@... -F bucket=videos`, a 7.8 KB MP4,
   `--parallel` at once, curl's own --parallel): checkout's REST through Envoy against the
   old-service way (bench/_old_service.py: the seed's handler, whole file in memory, a new
   MongoClient per request) on the same MinIO and FerretDB, and native UploadVideo from a
   grpc.aio client for reference. Each round starts from empty collections and runs all
   three back to back, in a rotating order; the ratio is per round, REST / old-service way.
2. What the relay's work on the shared FerretDB costs the uploads: one round with the relay
   paused (SIGSTOP), and one while it drains `--drain` events inserted at once into the
   outbox, each against the rounds' medians.
3. What one small upload costs: MinIO requests and MongoDB commands, counted on a server
   built in this process (the same wiring; PyMongo command monitoring, and the MinIO
   client's requests).
4. Each `--size-mib` file (0 skips them) with `curl -F` through Envoy, with `curl -F` to the
   old-service way, through UploadVideo and with a direct put_object, with the peak RSS
   growth of the process that took it (the server, or the peer for its own path).

Starts the whole local stack (devstack LocalStack) on free ports, and the peer beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient, monitoring

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench import _proc
from bench._events import bench_event
from bench._old_service import DATABASE as OLD_SERVICE_DATABASE
from bench.upload_throughput import make_file, reset_peak, rss_kib, via_grpc
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.outbox.document import status_document, to_document
from checkout_server.wiring.server import create_app
from devstack import free_port
from devstack._stack import LocalStack, StackPorts

MiB = 1024 * 1024
SMALL_BYTES = 7_800


def rest_upload(port: int, path: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"http://127.0.0.1:{port}/api/upload_video",
         "-F", f"file=@{path}", "-F", "bucket=videos"],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    assert json.loads(result.stdout)["status"] == "ok", result.stdout
    return elapsed


def curl_many(port: int, path: Path, count: int, parallel: int) -> float:
    """`count` multipart uploads with one curl, `parallel` at a time; uploads per second."""
    args = ["curl", "-sS", "--parallel", "--parallel-max", str(parallel)]
    for i in range(count):
        if i:
            args.append("--next")
        args += [f"http://127.0.0.1:{port}/api/upload_video", "-F", f"file=@{path}",
                 "-F", "bucket=videos", "-o", "/dev/null", "-w", "%{http_code}\n"]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600)
    elapsed = time.perf_counter() - started
    codes = collections.Counter(result.stdout.split())
    assert codes == {"200": count}, (codes, result.stderr[-500:])
    return count / elapsed


async def grpc_many(port: int, data: bytes, count: int, parallel: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: pb_grpc.CheckoutServiceAsyncStub = pb_grpc.CheckoutServiceStub(channel)
        gate = asyncio.Semaphore(parallel)

        async def one() -> None:
            async with gate:
                await stub.UploadVideo(
                    iter(
                        [
                            pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="s.mp4")),
                            pb.UploadVideoRequest(chunk=data),
                        ]
                    )
                )

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)


def start_peer(stack: LocalStack, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (work / "old_service.log").open("wb")
    peer = subprocess.Popen(
        [sys.executable, "-m", "bench._old_service", "--port", str(port),
         "--mongo-uri", f"mongodb://127.0.0.1:{stack.ports.mongo}/",
         "--minio", f"127.0.0.1:{stack.ports.minio}"],
        cwd=Path(__file__).resolve().parent.parent, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:  # readiness: its health answers
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1):
                return peer, port
        except OSError as exc:
            if peer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the peer did not start: {work}/old_service.log") from exc
            time.sleep(0.1)


def small_round(
    stack: LocalStack,
    peer_pid: int,
    peer_port: int,
    path: Path,
    args: argparse.Namespace,
    turn: int,
    *,
    backlog: int = 0,
) -> dict[str, float]:
    """One round from empty collections (plus `backlog` events for the relay to drain)."""
    data = path.read_bytes()
    processes = {
        "server": stack.server.pid,
        "envoy": stack.envoy.pid,
        "relay": stack.relay.pid,
        "ferretdb": stack.ferretdb.pid,
        "minio": stack.minio.pid,
        "old service": peer_pid,
    }
    asyncio.run(reset_events(stack))
    if backlog:
        asyncio.run(insert_backlog(stack, backlog))
    runs: dict[str, Callable[[], float]] = {
        "rest": lambda: curl_many(stack.ports.rest, path, args.small, args.parallel),
        "old": lambda: curl_many(peer_port, path, args.small, args.parallel),
        "grpc": lambda: asyncio.run(grpc_many(stack.ports.grpc, data, args.small, args.parallel)),
    }
    names = list(runs)
    names = names[turn % 3 :] + names[: turn % 3]  # nobody always goes first
    rates = {}
    for name in names:
        before = cpu_seconds(processes)
        rates[name] = runs[name]()
        after = cpu_seconds(processes)
        CPU_MS[name].append({k: (after[k] - before[k]) * 1000 / args.small for k in after})
    return rates


# CPU milliseconds per upload of each process, per path and round (printed at the end).
CPU_MS: dict[str, list[dict[str, float]]] = collections.defaultdict(list)


def cpu_seconds(processes: dict[str, int | None]) -> dict[str, float]:
    """User and system CPU time of each running process so far."""
    return {name: _proc.cpu_seconds(pid) for name, pid in processes.items() if pid is not None}


def print_cpu() -> None:
    print("CPU ms per small upload, median over the rounds (PostgreSQL's own not counted):")
    for name, rounds in CPU_MS.items():
        per = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        spent = " ".join(f"{k} {v:.1f}" for k, v in per.items() if v >= 0.05)
        print(f"  {name:>4}: {spent}")


def print_round(label: str, r: dict[str, float]) -> None:
    print(
        f"{label:>10} {r['rest']:>10.1f} {r['old']:>12.1f} {r['grpc']:>10.1f} "
        f"{r['rest'] / r['old']:>11.2f}"
    )


async def reset_events(stack: LocalStack) -> None:
    """Delete every event of both services, so that each round starts from empty collections
    (FerretDB scans them: a round after others would otherwise pay for their events)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{stack.ports.mongo}/", tz_aware=True
    )
    try:
        for database, collection in [
            ("main_db", "outbox"),
            ("main_db", "event_statuses"),
            (OLD_SERVICE_DATABASE, "outbox"),
        ]:
            await client[database][collection].delete_many({})
    finally:
        await client.close()


async def insert_backlog(stack: LocalStack, count: int) -> None:
    """`count` new events, as the server writes them, for the relay to drain."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{stack.ports.mongo}/", tz_aware=True
    )
    try:
        database = client["main_db"]
        documents = [to_document(bench_event(datetime.now(UTC))) for _ in range(count)]
        for start in range(0, count, 1000):
            batch = documents[start : start + 1000]
            # Status records first: the relay writes a missing one itself for any message it
            # finds, and would race this insert.
            await database["event_statuses"].insert_many(
                [status_document(d) for d in batch], ordered=False
            )
            await database["outbox"].insert_many(batch, ordered=False)
    finally:
        await client.close()


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: collections.Counter[str] = collections.Counter()
        self.counting = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.counting:
            self.names[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def count_round_trips(stack: LocalStack, data: bytes, uploads: int) -> None:
    """MinIO requests and MongoDB commands per small upload, on a server in this process."""
    commands = CommandCounter()
    monitoring.register(commands)  # for clients made from now on: the server's below
    settings = ServerSettings(
        grpc_addr="127.0.0.1:0",
        metrics_addr="",
        minio_endpoint=f"127.0.0.1:{stack.ports.minio}",
        mongo_uri=f"mongodb://127.0.0.1:{stack.ports.mongo}/",
        mongo_db=f"bench_{uuid.uuid4().hex[:8]}",
        health_interval_s=3600.0,  # no dependency probes during the count
    )
    app = await create_app(settings)
    await app.start()
    requests: collections.Counter[str] = collections.Counter()
    open_url = app.minio._url_open

    async def counted(method: str, region: str, **kwargs: Any) -> Any:
        query = kwargs.get("query_params") or {}
        requests[f"{method} {'?' + '&'.join(sorted(query)) if query else ''}".strip()] += 1
        return await open_url(method, region, **kwargs)

    app.minio._url_open = counted  # type: ignore[method-assign,assignment]
    try:
        await grpc_many(app.port, data, 1, 1)  # warm: connections, the bucket's region
        requests.clear()
        commands.counting = True
        await grpc_many(app.port, data, uploads, 1)
        commands.counting = False
    finally:
        await app.stop(grace_s=1.0)
    per = {f"MinIO {k}": v / uploads for k, v in requests.items()}
    per |= {f"MongoDB {k}": v / uploads for k, v in commands.names.items()}
    print(f"per small upload (UploadVideo, {uploads} in a row):")
    for name, count in sorted(per.items()):
        print(f"  {name}: {count:.2f}")
    minio_total = sum(requests.values()) / uploads
    mongo_total = sum(commands.names.values()) / uploads
    print(f"  total: {minio_total:.2f} MinIO requests, {mongo_total:.2f} MongoDB round trips")


async def direct(stack: LocalStack, path: Path, size: int) -> float:
    s3 = Minio(f"127.0.0.1:{stack.ports.minio}", "minioadmin", "minioadmin", secure=False)
    try:
        started = time.perf_counter()
        with path.open("rb") as f:
            await s3.put_object("videos", f"direct/{uuid.uuid4()}.mp4", f, size)
        return time.perf_counter() - started
    finally:
        await s3.close_session()  # type: ignore[no-untyped-call]


async def native(stack: LocalStack, path: Path, size: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.grpc}") as channel:
        stub: pb_grpc.CheckoutServiceAsyncStub = pb_grpc.CheckoutServiceStub(channel)
        return await via_grpc(stub, path, size)


def large(stack: LocalStack, work: Path, sizes_mib: list[int]) -> None:
    """Each size through every path, one after the other, with the peak RSS growth of the
    process that took it (the server; the old-service way's own process for its path)."""
    peer, peer_port = start_peer(stack, work)
    try:
        print(f"{'size':>8} {'path':>22} {'MiB/s':>8} {'peak RSS growth':>16}")
        for size_mib in sizes_mib:
            large_one(stack, work / "video.mp4", size_mib, peer.pid, peer_port)
    finally:
        peer.terminate()
        peer.wait(timeout=10)


def large_one(stack: LocalStack, path: Path, size_mib: int, peer_pid: int, peer_port: int) -> None:
    server = stack.server.pid
    assert server is not None
    size = size_mib * MiB
    make_file(path, size)
    # The process whose memory each path grows (a direct put runs in this one: not shown).
    runs: dict[str, tuple[int | None, Callable[[], float]]] = {
        "REST via Envoy (curl)": (server, lambda: rest_upload(stack.ports.rest, path)),
        "old-service way (curl)": (peer_pid, lambda: rest_upload(peer_port, path)),
        "UploadVideo (gRPC)": (server, lambda: asyncio.run(native(stack, path, size))),
        "direct put_object": (None, lambda: asyncio.run(direct(stack, path, size))),
    }
    rates: dict[str, float] = {}
    for name, (pid, run) in runs.items():
        before = rss_kib(pid, "VmRSS") if pid else 0
        if pid:
            reset_peak(pid)
        seconds = run()
        growth = f"{(rss_kib(pid, 'VmHWM') - before) / 1024:.1f} MiB" if pid else "-"
        rates[name] = size_mib / seconds
        print(f"{size_mib:>4} MiB {name:>22} {rates[name]:>8.1f} {growth:>16}")
    print(
        f"{size_mib:>4} MiB ratios: REST / old-service way "
        f"{rates['REST via Envoy (curl)'] / rates['old-service way (curl)']:.2f}, "
        f"UploadVideo / direct put {rates['UploadVideo (gRPC)'] / rates['direct put_object']:.2f}"
    )
    path.unlink()


def small(stack: LocalStack, work: Path, args: argparse.Namespace) -> None:
    path = work / "small.mp4"
    make_file(path, SMALL_BYTES)
    peer, peer_port = start_peer(stack, work)
    try:
        small_round(stack, peer.pid, peer_port, path, replace_count(args, 20), 0)  # warm every path
        CPU_MS.clear()
        print(f"{args.small} uploads of {SMALL_BYTES} bytes, {args.parallel} at once (uploads/s):")
        print(f"{'round':>10} {'REST':>10} {'old service':>12} {'gRPC':>10} {'REST / old':>11}")
        rounds = []
        for turn in range(args.rounds):
            rounds.append(small_round(stack, peer.pid, peer_port, path, args, turn))
            print_round(str(turn + 1), rounds[-1])
        ratios = [r["rest"] / r["old"] for r in rounds]
        median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print_round("median", median)
        print_cpu()
        CPU_MS.clear()
        relay = stack.relay.pid
        assert relay is not None
        os.kill(relay, signal.SIGSTOP)  # what the relay's work on the shared FerretDB costs
        try:
            paused = small_round(stack, peer.pid, peer_port, path, args, 0)
        finally:
            os.kill(relay, signal.SIGCONT)
        print_round("no relay", paused)
        print_cpu()
        if args.drain:
            drained = small_round(stack, peer.pid, peer_port, path, args, 0, backlog=args.drain)
            print_round("draining", drained)
        print(f"REST / old-service way: {min(ratios):.2f}-{max(ratios):.2f} over the rounds")
        print(
            f"with the relay paused, REST runs at {paused['rest'] / median['rest']:.2f} of its "
            f"median, the old-service way at {paused['old'] / median['old']:.2f}"
        )
        if args.drain:
            print(
                f"while the relay drains {args.drain} more events: REST at "
                f"{drained['rest'] / median['rest']:.2f}, the old-service way at "
                f"{drained['old'] / median['old']:.2f}, gRPC at "
                f"{drained['grpc'] / median['grpc']:.2f} of their medians"
            )
        asyncio.run(count_round_trips(stack, path.read_bytes(), 20))
    finally:
        peer.terminate()
        peer.wait(timeout=10)


def replace_count(args: argparse.Namespace, small: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "small": small})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=200, help="small uploads per round")
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drain", type=int, default=2000, help="backlog for the relay; 0: skip")
    parser.add_argument(
        "--size-mib",
        type=int,
        nargs="*",
        default=[1024],
        help="the large files' sizes (none, or 0: skip)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checkout-bench-") as tmp:
        work = Path(tmp)
        stack = LocalStack(work / "stack", StackPorts.free())
        stack.start()
        try:
            if args.small:
                small(stack, work, args)
            sizes = [size for size in args.size_mib if size > 0]
            if sizes:
                large(stack, work, sizes)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
