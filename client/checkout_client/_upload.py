"""One UploadVideo attempt, written reader/writer style, and the file it reads.

Why the SHA-256 is not declared in the metadata on a first attempt: the metadata is the first
message, so declaring it would mean reading every file twice (a full pass to hash, then the
upload). Instead the client sends `size_bytes` from stat (the server refuses a file that grew
or shrank underway) and hashes the bytes as it sends them; the server hashes what it stored and
answers with it, and the client compares the two. Integrity on the wire is TCP's and HTTP/2's
job; the comparison proves the server stored exactly the bytes that were read. A retry, which
reads the file again anyway, declares the hash of the previous full read when it has one, so
the server checks that a replayed idempotency key really names the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import grpc

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

from ._models import UploadProgress

UploadSource = str | os.PathLike[str] | BinaryIO
"""What `upload` accepts: a path, or a binary file object open for reading."""

ProgressCallback = Callable[[UploadProgress], None]


class Source:
    """The bytes to upload: a file we opened from a path, or the caller's file object (which
    we never close). Rewindable when seekable, so a retry can send it again from its start."""

    def __init__(self, source: UploadSource, filename: str | None) -> None:
        self._owned = not hasattr(source, "read")
        if self._owned:
            path = Path(os.fspath(source))  # type: ignore[arg-type]
            self.file: BinaryIO = path.open("rb")
            default_name = path.name
        else:
            self.file = source  # type: ignore[assignment]
            name = getattr(source, "name", "")
            default_name = os.path.basename(name) if isinstance(name, str) else ""
        self.filename = filename if filename is not None else default_name
        self.start: int | None = None
        self.size: int | None = None
        with contextlib.suppress(OSError, ValueError):
            if self.file.seekable():
                self.start = self.file.tell()
                self.size = self.file.seek(0, os.SEEK_END) - self.start
                self.file.seek(self.start)

    @property
    def rewindable(self) -> bool:
        return self.start is not None

    def rewind(self) -> None:
        assert self.start is not None
        self.file.seek(self.start)

    def close(self) -> None:
        if self._owned:
            self.file.close()


class HashingReader:
    """Reads fixed-size chunks, hashing them; both off the event loop (hashlib and file reads
    release the GIL for large buffers)."""

    def __init__(self, file: BinaryIO, chunk_size: int) -> None:
        self._file = file
        self._chunk_size = chunk_size
        self.digest = hashlib.sha256()
        self.size = 0
        self.eof = False

    def _read(self) -> bytes:
        data = self._file.read(self._chunk_size)
        if data:
            self.digest.update(data)
            self.size += len(data)
        else:
            self.eof = True
        return data

    async def read(self) -> bytes:
        return await asyncio.to_thread(self._read)


@dataclass(frozen=True)
class Attempt:
    """What one attempt sends besides the bytes."""

    metadata: pb.UploadMetadata
    number: int
    timeout_s: float | None


async def send_once(
    stub: pb_grpc.CheckoutServiceAsyncStub,
    reader: HashingReader,
    attempt: Attempt,
    total: int | None,
    on_progress: ProgressCallback | None,
) -> pb.UploadVideoResponse:
    """One UploadVideo call: metadata, then chunks until EOF or until the call is over.

    The server may answer before the stream ends — at once for a replayed idempotency key, or
    with an error for refused input. Writing then stops (the call is `done()`) and the
    server's answer is what counts: a write that fails because the call ended is not the
    error, the call's status is (awaiting the call raises it as AioRpcError).
    """
    sent = 0
    # No request iterator: reader/writer style (grpc-stubs does not know that form).
    call = stub.UploadVideo(timeout=attempt.timeout_s)  # type: ignore[call-arg]
    next_read: asyncio.Task[bytes] | None = None
    try:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(pb.UploadVideoRequest(metadata=attempt.metadata))
            if on_progress:
                on_progress(UploadProgress(sent_bytes=0, total_bytes=total, attempt=attempt.number))
            # Read the next chunk while the current one is being written.
            next_read = asyncio.create_task(reader.read())
            while not call.done():
                data = await next_read
                next_read = None
                if not data:
                    await call.done_writing()
                    break
                next_read = asyncio.create_task(reader.read())
                await call.write(pb.UploadVideoRequest(chunk=data))
                sent += len(data)
                if on_progress:
                    on_progress(
                        UploadProgress(sent_bytes=sent, total_bytes=total, attempt=attempt.number)
                    )
        response = await call
    except BaseException:
        call.cancel()
        raise
    finally:
        if next_read is not None:
            # A running thread read cannot be cancelled; let it finish before the file is
            # rewound or closed.
            with contextlib.suppress(Exception):
                await next_read
    return response
