"""The asyncio client: one object per channel, one method per use of the service."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeVar

import grpc

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

from ._channel import MAX_CHUNK_BYTES, NO_RETRY, RetryPolicy, default_address, open_channel
from ._errors import ChecksumMismatch, from_grpc_error
from ._models import CleanupReport, Health, Operation, Request, Result, StatusUpdate, Upload
from ._resumable import upload_resumable
from ._upload import Attempt, HashingReader, ProgressCallback, Source, UploadSource, send_once

DEFAULT_CHUNK_BYTES = 512 * 1024
"""Upload chunk size. Measured (docs/client.md): from 256 KiB to 4 MiB throughput is equal
within noise (the server's storage path limits it), 64-128 KiB are slower; the client's CPU
per MiB is lowest at 512 KiB-2 MiB. 512 KiB is one eighth of the 4 MiB message limit, and
two chunks in flight (one sent, one read ahead) stay cheap."""

RESUMABLE_THRESHOLD_BYTES = 64 * 1024 * 1024
"""Files at least this large (of a known size) use a resumable session by default: a break
then costs at most a part (8 MiB by default) instead of the whole file."""

DEFAULT_TIMEOUT_S = 30.0
"""Default deadline of unary calls. Uploads and watches have none by default: their length
depends on the file and on the processing, not on the service's health."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class StatusPage:
    """One page of ListStatuses: `total` counts every match (-1: the server did not count,
    too many events are stored), `next_page_token` is empty on the last page; a page may be
    short, even empty, and still have one (the server's reading ran out of time)."""

    operations: list[Operation]
    total: int
    next_page_token: str


class AsyncCheckoutClient:
    """Asyncio client of checkout.v1.CheckoutService.

    Every method raises a `CheckoutError` subclass chosen by the gRPC status code (for
    example `InvalidArgument`, `NotFound`, `Unavailable`) carrying the server's Russian
    message and ErrorInfo reason. Use as ``async with AsyncCheckoutClient() as client:``
    or call `close()`.

    Args:
        address: ``host:port``; default `CHECKOUT_ADDR` or ``localhost:50051``.
        tls, root_certificates, token: see `open_channel` (a token needs TLS).
        certificate_chain, private_key: the client certificate for mTLS (PEM, both or
            neither; imply TLS): see `open_channel`.
        timeout_s: default deadline of unary calls (None: no deadline).
        retry: retries of UNAVAILABLE for uploads and read-only calls.
        channel: an existing grpc.aio channel to use instead (not closed by `close()`).
        options: extra gRPC channel options, overriding the SDK's.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        token: str | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen, shared safely)
        channel: grpc.aio.Channel | None = None,
        options: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        self.address = address or default_address()
        self._owns_channel = channel is None
        # A channel the SDK opens in clear text; one passed in is its owner's to secure.
        self._plaintext = channel is None and not (
            tls or root_certificates is not None or certificate_chain is not None
        )
        self._channel = channel or open_channel(
            self.address,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            token=token,
            options=options,
        )
        self._stub: pb_grpc.CheckoutServiceAsyncStub = pb_grpc.CheckoutServiceStub(self._channel)
        self._timeout_s = timeout_s
        self._retry = retry

    async def __aenter__(self) -> AsyncCheckoutClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel (if the client opened it); calls in flight are cancelled."""
        if self._owns_channel:
            await self._channel.close(None)

    # --- uploads ------------------------------------------------------------------------------

    async def upload(
        self,
        source: UploadSource,
        *,
        bucket: str = "",
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
        content_type: str = "video/mp4",
        sha256: str | None = None,
        timeout_s: float | None = None,
        resumable: bool | None = None,
    ) -> Upload:
        """Streams a video in and returns its stored object and event.

        `resumable` True uses a resumable session (StartResumableUpload, WriteUpload): after
        a break (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, ABORTED or
        DATA_LOSS) the client backs off with jitter, asks the server for `persisted_size`,
        seeks there and goes on; the RetryPolicy's attempts bound the failures in a row
        without progress. None (the default) does so for files of at least
        RESUMABLE_THRESHOLD_BYTES; False never. A repeated `idempotency_key` finds the same
        session again, also from another process, and goes on from what it stored. A
        resumable upload needs a seekable source of known size (ValueError otherwise).

        `source` is a path or a binary file object (read from its current position, never
        closed). It is sent in `chunk_size` pieces (at most 4 MiB) with its size from stat
        and an idempotency key (`idempotency_key`, or a new uuid4). On UNAVAILABLE the upload
        is retried from the start with the same key, up to the client's RetryPolicy: the
        server stores nothing for a failed attempt and replays the first result for a key it
        already completed (`deduplicated`), so a retry never makes a second event. A file
        object that cannot seek is not retried.

        `on_progress` is called on the event loop after each chunk is handed to gRPC.
        `sha256` (lowercase hex), when the caller knows it, is declared so the server checks
        it before storing anything; otherwise the client hashes while sending and compares
        with the server's hash (ChecksumMismatch if they differ). `timeout_s` bounds each
        attempt (default: none).

        Raises InvalidArgument (e.g. ``NOT_MP4``, ``FILE_TOO_LARGE``, ``BUCKET_NOT_ALLOWED``),
        FailedPrecondition (``IDEMPOTENCY_KEY_REUSED``), Unavailable once retries are spent,
        ValueError for a bad `chunk_size`, OSError if the file cannot be read.
        """
        if not 0 < chunk_size <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_BYTES} bytes")
        key = idempotency_key or str(uuid.uuid4())
        src = Source(source, filename)
        try:
            if resumable is None:
                resumable = src.size is not None and src.size >= RESUMABLE_THRESHOLD_BYTES
            if resumable:
                if src.size is None or src.start is None or src.size == 0:
                    raise ValueError("a resumable upload needs a seekable, non-empty file")
                metadata = pb.UploadMetadata(
                    filename=src.filename,
                    content_type=content_type,
                    bucket=bucket,
                    size_bytes=src.size,
                    sha256=sha256 or "",
                    idempotency_key=key,
                )
                return await upload_resumable(
                    self._stub,
                    self._unary,
                    src,
                    metadata=metadata,
                    chunk_size=chunk_size,
                    retry=self._retry,
                    timeout_s=timeout_s,
                    on_progress=on_progress,
                )
            declared = sha256 or ""
            number = 0
            while True:
                number += 1
                metadata = pb.UploadMetadata(
                    filename=src.filename,
                    content_type=content_type,
                    bucket=bucket,
                    size_bytes=src.size or 0,
                    sha256=declared,
                    idempotency_key=key,
                )
                attempt = Attempt(metadata, number, timeout_s)
                reader = HashingReader(src.file, chunk_size)
                try:
                    response = await send_once(self._stub, reader, attempt, src.size, on_progress)
                except grpc.aio.AioRpcError as e:
                    error = from_grpc_error(e)
                    if not (error.retriable and src.rewindable and number < self._retry.attempts):
                        raise error from e
                else:
                    local = declared or (reader.digest.hexdigest() if reader.eof else "")
                    if local and local != response.sha256:
                        raise ChecksumMismatch(
                            local=local, remote=response.sha256, event_id=response.event_id
                        )
                    return Upload.from_pb(response, idempotency_key=key, attempts=number)
                if reader.eof and not declared:
                    # The whole file was read: the retry declares its hash, so the server
                    # checks that a replayed key names the same file.
                    declared = reader.digest.hexdigest()
                await asyncio.sleep(self._retry.delay_s(number, error.retry_after_s))
                src.rewind()
        finally:
            src.close()

    # --- status -------------------------------------------------------------------------------

    async def status(self, event_id: str) -> Operation:
        """The current state of one event.

        Raises NotFound (``EVENT_NOT_FOUND``) for an unknown event and InvalidArgument
        (``INVALID_EVENT_ID``) for a malformed id."""
        response = await self._unary(
            self._stub.GetStatus, pb.GetStatusRequest(event_id=event_id), self._retry
        )
        return Operation.from_pb(response.operation)

    async def list_page(
        self, *, status: str = "", page_size: int = 0, page_token: str = ""
    ) -> StatusPage:
        """One page of events, newest first. `status` filters (empty: all); `page_size` 0
        means the server's default (100), capped at 1000; `page_token` is the previous page's
        `next_page_token`."""
        response = await self._unary(
            self._stub.ListStatuses,
            pb.ListStatusesRequest(page_size=page_size, page_token=page_token, status=status),
            self._retry,
        )
        return StatusPage(
            operations=[Operation.from_pb(m) for m in response.operations],
            total=response.total,
            next_page_token=response.next_page_token,
        )

    async def list_statuses(
        self, *, status: str = "", page_size: int = 0
    ) -> AsyncIterator[Operation]:
        """Every event (or those with `status`), newest first, fetching page after page
        through `next_page_token` as the iteration goes on."""
        token = ""
        while True:
            page = await self.list_page(status=status, page_size=page_size, page_token=token)
            for operation in page.operations:
                yield operation
            token = page.next_page_token
            if not token:
                return

    async def watch(self, event_id: str) -> AsyncIterator[StatusUpdate]:
        """The event's current status at once, then every change; ends after ``ready`` or
        ``failed``. An empty `event_id` watches every event and never ends by itself.

        If the connection drops (UNAVAILABLE, e.g. a server restart) or the server drops a
        slow reader (``WATCHER_TOO_SLOW``), the watch resubscribes under the RetryPolicy; the
        server then sends the current state again, which is skipped when unchanged.
        Heartbeats are not yielded.
        Raises NotFound / InvalidArgument like `status`."""
        last: StatusUpdate | None = None
        failures = 0
        while True:
            call = self._stub.WatchStatus(pb.WatchStatusRequest(event_id=event_id))
            try:
                async for message in call:
                    if message.heartbeat:
                        continue  # a keep-alive: nothing changed
                    update = StatusUpdate.from_pb(message)
                    failures = 0
                    if update != last:
                        last = update
                        yield update
                    if event_id and update.terminal:
                        return
                return
            except grpc.aio.AioRpcError as e:
                error = from_grpc_error(e)
                failures += 1
                resubscribe = error.retriable or error.reason == "WATCHER_TOO_SLOW"
                if not (resubscribe and failures < self._retry.attempts):
                    raise error from e
            finally:
                call.cancel()
            await asyncio.sleep(self._retry.backoff_s(failures))

    async def result(self, event_id: str) -> Result:
        """The detection result: `prediction` is the runner's JSON as a dict once the event is
        ``ready``, else None (the status says how far it got). Errors as for `status`."""
        response = await self._unary(
            self._stub.GetResult, pb.GetResultRequest(event_id=event_id), self._retry
        )
        return Result.from_pb(response)

    async def video(self, event_id: str) -> AsyncIterator[bytes]:
        """The event's stored video, in pieces of at most 1 MiB as they arrive (GetVideo). A
        refusal before the first piece (a retriable one: the server or this client has as many
        downloads going as it allows, ResourceExhausted) is retried under the RetryPolicy;
        after it, an error ends the iteration (start again). Errors as for `result`, and
        NotFound (``VIDEO_NOT_FOUND``) when the video is no longer stored."""
        number = 0
        while True:
            number += 1
            call = self._stub.GetVideo(pb.GetVideoRequest(event_id=event_id))
            sent = False
            try:
                async for body in call:
                    sent = True
                    if body.data:
                        yield body.data
                return
            except grpc.aio.AioRpcError as e:
                error = from_grpc_error(e)
                if sent or not (error.retriable and number < self._retry.attempts):
                    raise error from e
            finally:
                call.cancel()
            await asyncio.sleep(self._retry.delay_s(number, error.retry_after_s))

    async def download(self, event_id: str, path: Path) -> int:
        """Writes the event's stored video to `path` (through `path`.part, renamed once whole,
        so `path` never holds part of a video) and returns its size. Errors as for `video`."""
        part = path.with_name(path.name + ".part")
        size = 0
        out: BinaryIO | None = None
        try:
            async for piece in self.video(event_id):
                if out is None:  # opened once the server has said yes
                    out = await asyncio.to_thread(part.open, "wb")
                await asyncio.to_thread(out.write, piece)
                size += len(piece)
            if out is None:
                out = await asyncio.to_thread(part.open, "wb")
            await asyncio.to_thread(out.close)
            await asyncio.to_thread(part.replace, path)
        finally:
            if out is not None:
                out.close()
            part.unlink(missing_ok=True)
        return size

    # --- operations ---------------------------------------------------------------------------

    async def request(self, video_id: str, *, bucket: str = "") -> Request:
        """Creates a new event for a video already stored at ``input/{video_id}.mp4`` in
        `bucket` (empty: the default), to have it processed again. Never retried: a retry
        could create a second event."""
        response = await self._unary(
            self._stub.CreateRequest,
            pb.CreateRequestRequest(video_id=video_id, bucket=bucket),
            NO_RETRY,
        )
        return Request(event_id=response.event_id, video_id=response.video_id)

    async def cleanup(self, *, admin_token: str) -> CleanupReport:
        """Removes every object and event of the service. Sends `admin_token` as
        ``authorization: Bearer``; raises Unauthenticated / PermissionDenied when the server
        refuses it (or has Cleanup disabled). Not retried. Over a plaintext channel the SDK
        opened it is a ValueError, before anything is sent: the token would travel in clear
        text (pass `tls=True`, or a `channel=` of your own)."""
        if self._plaintext:
            raise ValueError("an admin token needs TLS: pass tls=True (and root_certificates)")
        response = await self._unary(
            self._stub.Cleanup,
            pb.CleanupRequest(),
            NO_RETRY,
            metadata=(("authorization", f"Bearer {admin_token}"),),
        )
        return CleanupReport(
            deleted_objects=response.deleted_objects, deleted_events=response.deleted_events
        )

    async def health(self) -> Health:
        """The service's view of its dependencies (the Health RPC). Not retried: a probe
        should report what it sees now. Raises Unavailable when the server is unreachable."""
        response = await self._unary(self._stub.Health, pb.HealthRequest(), NO_RETRY)
        return Health(status=response.status, dependencies=dict(response.dependencies))

    # --- plumbing -----------------------------------------------------------------------------

    async def _unary(
        self,
        method: Callable[..., Awaitable[_T]],
        request: object,
        retry: RetryPolicy,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> _T:
        number = 0
        while True:
            number += 1
            try:
                return await method(request, timeout=self._timeout_s, metadata=metadata)
            except grpc.aio.AioRpcError as e:
                error = from_grpc_error(e)
                if not (error.retriable and number < retry.attempts):
                    raise error from e
            await asyncio.sleep(retry.delay_s(number, error.retry_after_s))
