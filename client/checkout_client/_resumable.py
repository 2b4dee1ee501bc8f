"""Resumable uploads: a session (StartResumableUpload) written by WriteUpload streams; after a
break the client backs off, asks for `persisted_size` (QueryUploadStatus), seeks there and
goes on, instead of sending the file again from byte 0.

Integrity: every chunk carries its CRC32C (the server refuses a damaged one with DATA_LOSS
and the session stays resumable). The client also hashes the whole file (SHA-256) in order as
it reads it, bytes sent again after a seek back are not hashed twice, and a session that
another process began has its first bytes read from the file and hashed, not sent. The result's
SHA-256 must equal it (ChecksumMismatch otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import google_crc32c
import grpc

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

from ._channel import RetryPolicy
from ._errors import CheckoutError, ChecksumMismatch, InvalidArgument, from_grpc_error
from ._models import Upload, UploadProgress
from ._upload import ProgressCallback, Source

# The codes after which a resumable upload backs off, asks where the server is and goes on.
RESUMABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
    }
)
_HASH_BLOCK = 1024 * 1024

Unary = Callable[[Callable[..., Awaitable[Any]], object, RetryPolicy], Awaitable[Any]]


class _Reader:
    """Reads the file from an offset in chunks, off the event loop, with each chunk's CRC32C;
    feeds the whole-file SHA-256 with the bytes it has not seen yet."""

    def __init__(self, file: BinaryIO, base: int, chunk_size: int) -> None:
        self._file = file
        self._base = base  # the file position of byte 0
        self._chunk_size = chunk_size
        self.digest = hashlib.sha256()
        self.hashed = 0  # the digest covers bytes [0, hashed)
        self._position = 0

    def seek(self, offset: int) -> None:
        """Go to `offset`; bytes before it that were never hashed are read and hashed now."""
        if offset > self.hashed:
            self._file.seek(self._base + self.hashed)
            while self.hashed < offset:
                block = self._file.read(min(_HASH_BLOCK, offset - self.hashed))
                if not block:
                    break
                self.digest.update(block)
                self.hashed += len(block)
        self._file.seek(self._base + offset)
        self._position = offset

    def read(self) -> tuple[int, bytes, int]:
        """(offset, bytes, CRC32C) of the next chunk; empty bytes at the end of the file."""
        offset = self._position
        data = self._file.read(self._chunk_size)
        end = offset + len(data)
        if end > self.hashed:
            self.digest.update(memoryview(data)[self.hashed - offset :])
            self.hashed = end
        self._position = end
        return offset, data, google_crc32c.value(data)


async def _write_from(
    stub: pb_grpc.CheckoutServiceAsyncStub,
    reader: _Reader,
    *,
    upload_id: str,
    offset: int,
    size: int,
    timeout_s: float | None,
    progress: Callable[[int], None],
) -> pb.WriteUploadResponse:
    """One WriteUpload stream from `offset` to the end of the file, finishing it."""
    await asyncio.to_thread(reader.seek, offset)
    call = stub.WriteUpload(timeout=timeout_s)  # type: ignore[call-arg]
    next_read: asyncio.Task[tuple[int, bytes, int]] | None = None
    try:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            if offset >= size:
                await call.write(
                    pb.WriteUploadRequest(upload_id=upload_id, write_offset=size, finish_write=True)
                )
            else:
                next_read = asyncio.create_task(asyncio.to_thread(reader.read))
            while next_read is not None and not call.done():
                position, data, crc = await next_read
                next_read = None
                if not data:
                    raise InvalidArgument(
                        "Файл стал короче заявленного размера во время загрузки",
                        reason="FILE_CHANGED",
                    )
                last = position + len(data) >= size
                if not last:
                    next_read = asyncio.create_task(asyncio.to_thread(reader.read))
                await call.write(
                    pb.WriteUploadRequest(
                        upload_id=upload_id,
                        write_offset=position,
                        checksummed_data=pb.ChecksummedData(content=data, crc32c=crc),
                        finish_write=last,
                    )
                )
                progress(position + len(data))
            await call.done_writing()
        return await call
    except BaseException:
        call.cancel()
        raise
    finally:
        if next_read is not None:  # a thread read cannot be cancelled: let it end first
            with contextlib.suppress(Exception):
                await next_read


async def upload_resumable(
    stub: pb_grpc.CheckoutServiceAsyncStub,
    unary: Unary,
    src: Source,
    *,
    metadata: pb.UploadMetadata,
    chunk_size: int,
    retry: RetryPolicy,
    timeout_s: float | None,
    on_progress: ProgressCallback | None,
) -> Upload:
    """Start (or, for a repeated idempotency key, find) the session and write it to the end,
    resuming after every break on RESUMABLE_CODES. `retry.attempts` bounds the failures in a
    row without progress; any progress starts the count again."""
    assert src.start is not None
    assert src.size is not None
    size, key = src.size, metadata.idempotency_key
    started: pb.StartResumableUploadResponse = await unary(
        stub.StartResumableUpload, pb.StartResumableUploadRequest(metadata=metadata), retry
    )
    if started.HasField("result"):
        return Upload.from_pb(started.result, idempotency_key=key, attempts=1)
    upload_id, offset = started.upload_id, started.persisted_size
    reader = _Reader(src.file, src.start, chunk_size)
    attempt = failures = 0
    while True:
        attempt += 1
        resumed_from = offset

        def progress(sent: int, attempt: int = attempt, resumed_from: int = resumed_from) -> None:
            if on_progress is not None:
                on_progress(
                    UploadProgress(
                        sent_bytes=sent,
                        total_bytes=size,
                        attempt=attempt,
                        resumed_from_bytes=resumed_from,
                        upload_id=upload_id,
                    )
                )

        progress(offset)
        try:
            response = await _write_from(
                stub,
                reader,
                upload_id=upload_id,
                offset=offset,
                size=size,
                timeout_s=timeout_s,
                progress=progress,
            )
        except grpc.aio.AioRpcError as e:
            error = from_grpc_error(e)
            if error.reason == "UPLOAD_OFFSET_OUT_OF_RANGE" and "persisted_size" in error.metadata:
                offset = int(error.metadata["persisted_size"])  # seek there, no wait
                continue
            if e.code() not in RESUMABLE_CODES and not error.retriable:
                raise error from e
            failures += 1
            if failures >= retry.attempts:
                raise error from e
            await asyncio.sleep(retry.delay_s(failures, error.retry_after_s))
            state: pb.QueryUploadStatusResponse = await unary(
                stub.QueryUploadStatus, pb.QueryUploadStatusRequest(upload_id=upload_id), retry
            )
            if not state.HasField("result"):
                if state.persisted_size > offset:
                    failures = 0  # the broken stream moved the session on
                offset = state.persisted_size
                continue
            response = pb.WriteUploadResponse(result=state.result)
        if response.WhichOneof("write_status") != "result":
            raise CheckoutError(
                "Сервер не завершил загрузку", reason="UPLOAD_NOT_FINISHED"
            )  # a finishing stream always ends with the result
        result = response.result
        local = metadata.sha256 or (reader.digest.hexdigest() if reader.hashed == size else "")
        if local and local != result.sha256:
            raise ChecksumMismatch(local=local, remote=result.sha256, event_id=result.event_id)
        return Upload.from_pb(result, idempotency_key=key, attempts=attempt, upload_id=upload_id)
