"""Upload throughput and memory: UploadVideo through the checkout server versus a direct
miniopy-async put_object of the same file into the same MinIO, in one run.

Starts its own FerretDB and MinIO (devstack) and the server as a separate process, so the
server's memory can be read from /proc: its peak RSS is reset before each upload
(clear_refs) and read after it (VmHWM), giving the peak growth over the idle server.

    python bench/upload_throughput.py [--sizes-mib 256 1024] [--rounds 3]

Prints per-size median throughput of both paths, the median and range of the per-round
ratios (gRPC / direct, each round's pair run back to back), the server's peak RSS growth, and
then 32 concurrent 16 MiB uploads. Loopback only; numbers vary with machine load, so
compare the ratio, not the absolute values.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from miniopy_async.api import Minio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._backends import Backends, started
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

MiB = 1024 * 1024
CHUNK = 1 * MiB
BUCKET = "videos"


def make_file(path: Path, size: int) -> None:
    header = (24).to_bytes(4, "big") + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
    block = hashlib.shake_256(b"bench").digest(4 * MiB)
    with path.open("wb") as f:
        f.write(header)
        left = size - len(header)
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def file_messages(path: Path) -> AsyncIterator[pb.UploadVideoRequest]:
    yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename=path.name))
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield pb.UploadVideoRequest(chunk=chunk)


async def via_grpc(stub: pb_grpc.CheckoutServiceAsyncStub, path: Path, size: int) -> float:
    started = time.perf_counter()
    response = await stub.UploadVideo(file_messages(path))
    elapsed = time.perf_counter() - started
    assert response.size_bytes == size
    return elapsed


async def direct(s3: Minio, path: Path, size: int) -> float:
    started = time.perf_counter()
    with path.open("rb") as f:
        # The library's own streaming upload with its defaults (3 parallel part uploads).
        await s3.put_object(BUCKET, f"direct/{uuid.uuid4()}.mp4", f, size, content_type="video/mp4")
    return time.perf_counter() - started


async def run(args: argparse.Namespace, work: Path) -> None:
    with started(work) as backends:
        await measure(args, work, backends)


async def measure(args: argparse.Namespace, work: Path, backends: Backends) -> None:
    port, pid = backends.server.port, backends.server_pid
    endpoint = backends.minio.endpoint
    s3 = Minio(endpoint, access_key="minioadmin", secret_key="minioadmin", secure=False)
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 * MiB)]
        ) as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            warm = work / "warm.mp4"
            make_file(warm, 16 * MiB)
            await via_grpc(stub, warm, 16 * MiB)
            await direct(s3, warm, 16 * MiB)
            idle_kib = rss_kib(pid, "VmRSS")
            print(f"server idle RSS: {idle_kib / 1024:.1f} MiB (pid {pid})")
            header = ("size", "gRPC MiB/s", "direct MiB/s", "ratio", "(range)", "peak RSS growth")
            print("{:>8} {:>11} {:>13} {:>6} {:>11} {:>16}".format(*header))
            for size_mib in args.sizes_mib:
                path = work / f"video-{size_mib}.mp4"
                make_file(path, size_mib * MiB)
                grpc_s, direct_s, ratios, growth = [], [], [], []
                for _ in range(args.rounds):
                    before = rss_kib(pid, "VmRSS")
                    reset_peak(pid)
                    grpc_s.append(await via_grpc(stub, path, size_mib * MiB))
                    growth.append(rss_kib(pid, "VmHWM") - before)
                    direct_s.append(await direct(s3, path, size_mib * MiB))
                    # Each round's pair ran back to back, under about the same machine load.
                    ratios.append(direct_s[-1] / grpc_s[-1])
                g = size_mib / statistics.median(grpc_s)
                d = size_mib / statistics.median(direct_s)
                spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
                print(
                    f"{size_mib:>5} MiB {g:>11.1f} {d:>13.1f} {statistics.median(ratios):>6.2f} "
                    f"{spread:>11} {max(growth) / 1024:>12.1f} MiB"
                )
                path.unlink()

            path = work / "video-16.mp4"
            make_file(path, 16 * MiB)
            before = rss_kib(pid, "VmRSS")
            reset_peak(pid)
            started = time.perf_counter()
            results = await asyncio.gather(
                *(via_grpc(stub, path, 16 * MiB) for _ in range(32)), return_exceptions=True
            )
            elapsed = time.perf_counter() - started
            failures = [r for r in results if isinstance(r, BaseException)]
            print(
                f"32 concurrent 16 MiB uploads: {32 - len(failures)}/32 ok in {elapsed:.1f} s "
                f"({32 * 16 / elapsed:.1f} MiB/s), peak RSS growth "
                f"{(rss_kib(pid, 'VmHWM') - before) / 1024:.1f} MiB"
            )
            for failure in failures[:3]:
                print(f"  failure: {failure!r}")
    finally:
        await s3.close_session()  # type: ignore[no-untyped-call]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(
        prefix="checkout-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
