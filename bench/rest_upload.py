"""A REST multipart upload through Envoy (curl -F, as the seed's clients do) versus the same
file through native UploadVideo and a direct put_object, in one run, with the server's peak
RSS growth per upload.

    python bench/rest_upload.py [--size-mib 1024]

Starts the whole local stack (devstack LocalStack) on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from miniopy_async.api import Minio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.upload_throughput import make_file, reset_peak, rss_kib, via_grpc
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from devstack._stack import LocalStack, StackPorts

MiB = 1024 * 1024


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="checkout-bench-") as tmp:
        work = Path(tmp)
        stack = LocalStack(work / "stack", StackPorts.free(), envoy_base_id=11)
        stack.start()
        try:
            path = work / "video.mp4"
            make_file(path, size)
            pid = stack.server.pid
            assert pid is not None
            print(f"{'path':>22} {'MiB/s':>8} {'peak RSS growth':>16}")
            runs: dict[str, Callable[[], float]] = {
                "REST via Envoy (curl)": lambda: rest_upload(stack.ports.rest, path),
                "UploadVideo (gRPC)": lambda: asyncio.run(native(stack, path, size)),
                "direct put_object": lambda: asyncio.run(direct(stack, path, size)),
            }
            for name, run in runs.items():
                before = rss_kib(pid, "VmRSS")
                reset_peak(pid)
                seconds = run()
                growth = (rss_kib(pid, "VmHWM") - before) / 1024
                print(f"{name:>22} {args.size_mib / seconds:>8.1f} {growth:>12.1f} MiB")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
