"""Resumable uploads: a file cut three times and resumed, against the same file unbroken, and
the server's memory per stream.

Starts its own FerretDB and MinIO (devstack) and the server as a separate process (bench/
_backends.py). For `--size-mib` (default 1024):

- unbroken: one StartResumableUpload and one WriteUpload stream to the end;
- cut: the client breaks the stream off (cancels the call) in the middle of the parts at
  about 25 %, 50 % and 75 % of the file, waits half a second (as the SDK backs off), asks
  QueryUploadStatus for persisted_size and resumes from there;
  `re-sent` is what the client sent beyond the file's size (what a cut cost);
- for comparison, the same file by UploadVideo (time and peak RSS growth), whose retry after
  a cut sends everything again (the cost it would have: what was sent before each cut).

Memory: the server's peak RSS growth (VmHWM after clear_refs, over the RSS before) during
the unbroken upload (twice: first and after UploadVideo), and with `--streams` concurrent
sessions of 256 MiB, per stream, beside two parts (UPLOAD_PART_BYTES, 8 MiB by default) and
beside as many concurrent UploadVideo streams. Loopback only; numbers vary with load.

    python bench/resumable_upload.py [--size-mib 1024] [--streams 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import google_crc32c
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._backends import started
from bench.upload_throughput import file_messages, make_file, reset_peak, rss_kib
from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

MiB = 1024 * 1024
CHUNK = MiB
PART = 8 * MiB  # the server's default UPLOAD_PART_BYTES
# What a client waits after a cut before it asks where to go on (the SDK: its backoff, at
# least half of RetryPolicy.initial_backoff_s, 1 s). Meanwhile the server lets the part that
# was on its way to MinIO become durable.
RESUME_PAUSE_S = 0.5


async def messages(
    upload_id: str, path: Path, start: int, end: int, *, finish: bool
) -> AsyncIterator[pb.WriteUploadRequest]:
    with path.open("rb") as f:
        f.seek(start)
        offset = start
        while offset < end:
            data = f.read(min(CHUNK, end - offset))
            last = finish and offset + len(data) >= end
            yield pb.WriteUploadRequest(
                upload_id=upload_id,
                write_offset=offset,
                checksummed_data=pb.ChecksummedData(content=data, crc32c=google_crc32c.value(data)),
                finish_write=last,
            )
            offset += len(data)


async def start(stub: pb_grpc.CheckoutServiceAsyncStub, size: int) -> str:
    response = await stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=pb.UploadMetadata(size_bytes=size))
    )
    return response.upload_id


async def unbroken(stub: pb_grpc.CheckoutServiceAsyncStub, path: Path, size: int) -> float:
    began = time.perf_counter()
    upload_id = await start(stub, size)
    response = await stub.WriteUpload(messages(upload_id, path, 0, size, finish=True))
    assert response.result.size_bytes == size
    return time.perf_counter() - began


async def cut(
    stub: pb_grpc.CheckoutServiceAsyncStub, path: Path, size: int, cuts: list[int]
) -> tuple[float, int]:
    """(seconds, bytes sent in all) for an upload broken off at each of `cuts`."""
    began = time.perf_counter()
    upload_id = await start(stub, size)
    offset, sent = 0, 0
    for at in cuts:
        handed = asyncio.Event()

        async def until_cut(
            start: int = offset, end: int = at, handed: asyncio.Event = handed
        ) -> AsyncIterator[pb.WriteUploadRequest]:
            async for message in messages(upload_id, path, start, end, finish=False):
                yield message
            handed.set()
            await asyncio.Event().wait()  # the link is still "up" until it is cut

        call = stub.WriteUpload(until_cut())
        # The cut: once the bytes up to `at` are handed to gRPC the connection is gone (what
        # was still in buffers or in the part being collected is lost with it).
        await handed.wait()
        call.cancel()
        sent += at - offset
        await asyncio.sleep(RESUME_PAUSE_S)
        query = pb.QueryUploadStatusRequest(upload_id=upload_id)
        offset = (await stub.QueryUploadStatus(query)).persisted_size
    response = await stub.WriteUpload(messages(upload_id, path, offset, size, finish=True))
    sent += size - offset
    assert response.result.size_bytes == size
    return time.perf_counter() - began, sent


async def plain(stub: pb_grpc.CheckoutServiceAsyncStub, path: Path, size: int) -> float:
    began = time.perf_counter()
    response = await stub.UploadVideo(file_messages(path))
    assert response.size_bytes == size
    return time.perf_counter() - began


async def measure(args: argparse.Namespace, work: Path) -> None:
    with started(work) as backends:
        port, pid = backends.server.port, backends.server_pid
        size = args.size_mib * MiB
        path = work / "video.mp4"
        make_file(path, size)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            # Warm up both paths with a file of several parts: a process's first large
            # uploads grow its allocator's arenas, which would count as the first one's.
            warm = work / "warm.mp4"
            make_file(warm, 64 * MiB)
            await unbroken(stub, warm, 64 * MiB)
            await plain(stub, warm, 64 * MiB)
            idle = rss_kib(pid, "VmRSS")
            print(f"server idle RSS {idle / 1024:.1f} MiB; file {args.size_mib} MiB")

            reset_peak(pid)
            whole = await unbroken(stub, path, size)
            growth = (rss_kib(pid, "VmHWM") - idle) / 1024
            print(
                f"unbroken resumable: {whole:.1f} s ({args.size_mib / whole:.0f} MiB/s), "
                f"peak RSS growth {growth:.1f} MiB (two parts: {2 * PART // MiB} MiB)"
            )
            # In the middle of parts (a cut at a part boundary would flatter the result).
            cuts = [k * size // 4 + PART // 2 + 12345 for k in (1, 2, 3)]
            seconds, sent = await cut(stub, path, size, cuts)
            print(
                f"cut 3 times: {seconds:.1f} s ({seconds / whole:.2f}x unbroken), sent "
                f"{sent / MiB:.1f} MiB, re-sent {(sent - size) / MiB:.1f} MiB "
                f"({(sent - size) / size:.2%})"
            )
            before = rss_kib(pid, "VmRSS")
            reset_peak(pid)
            once = await plain(stub, path, size)
            plain_growth = (rss_kib(pid, "VmHWM") - before) / 1024
            restart_cost = sum(cuts) / MiB
            print(
                f"UploadVideo unbroken: {once:.1f} s, peak RSS growth {plain_growth:.1f} MiB; "
                f"with the same 3 cuts it would send {restart_cost:.0f} MiB again (every "
                "retry starts from byte 0)"
            )

            # The first large upload of a process also grows its allocator's arenas: measure
            # the resumable path again now, after UploadVideo, on the same footing.
            before = rss_kib(pid, "VmRSS")
            reset_peak(pid)
            again = await unbroken(stub, path, size)
            print(
                f"unbroken resumable again: {again:.1f} s, peak RSS growth "
                f"{(rss_kib(pid, 'VmHWM') - before) / 1024:.1f} MiB"
            )

            streams = args.streams
            small = work / "video-256.mp4"
            make_file(small, 256 * MiB)
            # Sessions, UploadVideo, sessions again: the first phase also grows the allocator's
            # arenas, which the later phases reuse.
            for name, one in (
                ("sessions", unbroken),
                ("UploadVideo streams", plain),
                ("sessions (again)", unbroken),
            ):
                before = rss_kib(pid, "VmRSS")
                reset_peak(pid)
                began = time.perf_counter()
                await asyncio.gather(*(one(stub, small, 256 * MiB) for _ in range(streams)))
                elapsed = time.perf_counter() - began
                per = (rss_kib(pid, "VmHWM") - before) / 1024 / streams
                print(
                    f"{streams} concurrent 256 MiB {name}: {elapsed:.1f} s, peak RSS growth "
                    f"{per:.1f} MiB per stream (two parts: {2 * PART // MiB} MiB)"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(
        prefix="checkout-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
