"""The upload pipeline: validate, stream into object storage, then write the outbox event.

All or nothing: the object becomes visible only when the stream is complete and valid, the
event is written only after that, and on any failure (bad input, a backend error, the client
cancelling, the server stopping) whatever was written is removed again.

Memory per upload is bounded by about two storage parts: the part sender (part_sender.py)
collects chunks into a part while the one before is stored, and the SHA-256 of the stream is
computed part by part beside each part's upload. All uploads together stay within a memory
budget: an upload reserves its buffer before reading its first chunk and waits a few seconds
at most while the budget is spent (admission.py), then is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from checkout_common.backoff import Backoff

from .. import errors
from ..domain import (
    VIDEO_CONTENT_TYPE,
    OutboxEvent,
    StoredVideo,
    UploadRequest,
    UploadResult,
    input_object_key,
)
from ..errors import DuplicateIdempotencyKey
from ..ports import ObjectStorage, ObjectWriter, Outbox
from ..rules import VideoHead, check_complete, check_received, check_same_file
from .admission import Admission
from .limits import UploadLimits
from .memory import MemoryBudget
from .part_sender import Part, PartSender, hash_chunks, write_hashing

log = logging.getLogger(__name__)

# After an insert whose answer was lost (the database went away meanwhile), how long the
# upload asks whether its event was written before it gives up and keeps the object.
LOST_INSERT_CHECK_S = 30.0
_LOST_INSERT_BACKOFF = Backoff(initial_s=0.2, max_s=2.0)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


def _no_trace() -> str:
    return ""


class UploadPipeline:
    """Turns one validated stream of chunks into a stored video and its `new` event."""

    def __init__(
        self,
        *,
        storage: ObjectStorage,
        outbox: Outbox,
        limits: UploadLimits,
        clock: Callable[[], datetime] = _utcnow,
        new_id: Callable[[], str] = _new_id,
        cleanup_wait_s: float = 5.0,
        traceparent: Callable[[], str] = _no_trace,
        admission: Admission | None = None,
    ) -> None:
        """`traceparent` returns the W3C trace context of the current request ("" if none),
        stored with the event so that its publishing continues the upload's trace.
        `admission` admits each upload (concurrency, its client's rate, memory, interrupts),
        shared with the resumable writes; without one (a pipeline alone, in unit tests) the
        pipeline has its own, from `limits`."""
        self.admission = admission or Admission(limits)
        self._cleanup_wait_s = cleanup_wait_s
        self._traceparent = traceparent
        self._storage = storage
        self._outbox = outbox
        self._limits = limits
        self._clock = clock
        self._new_id = new_id
        self._cleanups: set[asyncio.Task[None]] = set()
        self.bytes_received_total = 0  # for the metrics, kept or not

    @property
    def in_flight(self) -> int:
        """UploadVideo streams running now (its admission's count)."""
        return self.admission.uploads_in_flight

    @property
    def rate_limited_total(self) -> int:
        """Uploads refused for their client's rate (its admission's count)."""
        return self.admission.rate_limited_total

    @property
    def memory(self) -> MemoryBudget:
        """The memory budget its uploads reserve from (its admission's)."""
        return self.admission.memory

    async def upload(
        self, request: UploadRequest, chunks: AsyncIterator[bytes], *, client: str = ""
    ) -> UploadResult:
        """Store one upload; `client` is who the limits per client count it for (admission's
        api/clients.py; the request's owner when not given)."""
        bucket = self._limits.check(request)
        if request.idempotency_key:
            existing = await self._outbox.find_by_idempotency_key(
                request.idempotency_key, owner=request.owner
            )
            if existing is not None:
                check_same_file(request, existing)
                log.info("upload replayed", extra={"event_id": existing.event_id})
                return UploadResult(event=existing, deduplicated=True)

        async with self.admission.upload(client or request.owner, owner=request.owner) as stream:
            try:
                async with asyncio.timeout(self._limits.max_duration_s) as deadline:
                    return await self._store(request, chunks, bucket)
            except TimeoutError:
                if deadline.expired():
                    raise errors.UploadTooLong(
                        f"дольше {self._limits.max_duration_s:g} с",
                        max_duration_s=f"{self._limits.max_duration_s:g}",
                    ) from None
                raise
            except asyncio.CancelledError as cancelled:
                if not stream.interrupted():
                    raise  # cancelled by its client, its deadline or the server's own stop
                if isinstance(cancelled, _CancelledAfterCommit):
                    return UploadResult(event=cancelled.event)  # stored: answered so
                raise errors.ShuttingDown("загрузка прервана, повторите её") from None

    def interrupt(self) -> int:
        """Stop every upload still streaming, plain or resumable, and refuse new ones: each
        is answered UNAVAILABLE SHUTTING_DOWN (retriable, in Russian). A plain upload's
        object is removed as for any refusal, and one whose event was written meanwhile is
        answered with its result; a resumable write keeps its committed parts and is told
        its persisted size. For the end of a stop's grace period, before the server cancels
        what is left with a bare status of its own. Returns how many were streaming."""
        return self.admission.interrupt()

    async def _store(
        self, request: UploadRequest, chunks: AsyncIterator[bytes], bucket: str
    ) -> UploadResult:
        """Stream the video into storage, then write its event; all or nothing."""
        video_id = self._new_id()
        key = input_object_key(video_id)
        writer = self._storage.open_writer(bucket, key, VIDEO_CONTENT_TYPE)
        keep_object = False
        try:
            stored = await self._stream(request, chunks, writer, video_id, bucket, key)
            event = OutboxEvent.new(
                event_id=video_id,  # as in the seed: one event per uploaded video
                video_id=video_id,
                bucket=bucket,
                object_key=key,
                size_bytes=stored.size_bytes,
                now=self._clock(),
                filename=request.filename,
                sha256=stored.sha256,
                idempotency_key=request.idempotency_key,
                traceparent=self._traceparent(),
                owner=request.owner,
            )
            try:
                await self._add_event(event)
            except (errors.DatabaseUnavailable, errors.DatabaseTimeout):
                # The insert's answer was lost (or it outlasted the server's own deadline, a
                # write concern's wtimeout among them), but it may have been written all the
                # same: removing the object then would leave the relay an event without its
                # video.
                keep_object = True  # until the database says it was not (cancelled meanwhile)
                written = await self._lost_insert(video_id)
                if isinstance(written, OutboxEvent):
                    log.warning(
                        "event written although its insert failed", extra={"event_id": video_id}
                    )
                    return UploadResult(event=written)
                keep_object = written is _UNKNOWN
                raise
        except _CancelledAfterCommit:
            # The client went away (or its deadline passed) once the event was written: the
            # object stays with it, and a retry with the same key is answered with it.
            log.info("upload cancelled after its event was written", extra={"event_id": video_id})
            raise
        except DuplicateIdempotencyKey as duplicate:
            # A concurrent upload with the same key won the race: keep its result only, if it
            # is of the same file (the bytes are known now, declared or not).
            await self._cleanup(writer.abort())
            check_same_file(
                replace(request, size_bytes=stored.size_bytes, sha256=stored.sha256),
                duplicate.existing,
            )
            return UploadResult(event=duplicate.existing, deduplicated=True)
        except BaseException as exc:
            if isinstance(exc, errors.ServiceError):
                exc.metadata.setdefault("video_id", video_id)  # to find leftovers, if any
            if keep_object:
                log.error(
                    "object kept: the database never said whether its event was written",
                    extra={"event_id": video_id, "bucket": bucket, "key": key},
                )
            else:
                await self._cleanup(writer.abort())
            raise
        log.info(
            "video stored",
            extra={"event_id": event.event_id, "size_bytes": event.size_bytes, "bucket": bucket},
        )
        return UploadResult(event=event)

    async def _lost_insert(self, event_id: str) -> OutboxEvent | _Unknown | None:
        """After an insert whose answer was lost: the event if it was written, None if the
        database says it was not, _UNKNOWN if it does not answer within LOST_INSERT_CHECK_S."""
        deadline = time.monotonic() + LOST_INSERT_CHECK_S
        failures = 0
        while True:
            try:
                return await self._outbox.get(event_id)
            except (errors.DatabaseUnavailable, errors.DatabaseTimeout):
                failures += 1
                delay = _LOST_INSERT_BACKOFF.delay_s(failures)
                if time.monotonic() + delay > deadline:
                    return _UNKNOWN
                await asyncio.sleep(delay)

    async def _add_event(self, event: OutboxEvent) -> None:
        """`Outbox.add`, carried to its end even when the upload is cancelled meanwhile: its
        insert is the commit point, and whether it happened must be known before the object
        may be removed. Cancelled and written, it raises _CancelledAfterCommit (the object
        stays); cancelled and not written, the CancelledError (the object is removed)."""
        adding = asyncio.ensure_future(self._outbox.add(event))
        try:
            await asyncio.shield(adding)
        except asyncio.CancelledError:
            while not adding.done():  # bounded by the database client's timeouts
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({adding})
            if not adding.cancelled() and adding.exception() is None:
                raise _CancelledAfterCommit(event) from None
            raise

    async def _stream(
        self,
        request: UploadRequest,
        chunks: AsyncIterator[bytes],
        writer: ObjectWriter,
        video_id: str,
        bucket: str,
        key: str,
    ) -> StoredVideo:
        """Read the stream into `writer` part by part, within the upload's memory, checking the
        rules as the bytes arrive; the object is finished only once all of it is valid."""
        limits = self._limits
        async with self.admission.buffers(part_bytes=limits.part_bytes) as memory:
            declared = request.size_bytes
            digest = hashlib.sha256()  # of the whole stream, part by part in order

            async def store(part: Part) -> None:
                await write_hashing(digest, part, writer.write_part(part.chunks))

            parts = PartSender(store, part_bytes=limits.part_bytes, memory=memory)
            head = VideoHead()
            total = 0
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    parts.raise_if_failed()  # a failed part stops the upload at once
                    offset = total
                    total += len(chunk)
                    self.bytes_received_total += len(chunk)
                    check_received(total, declared=declared, max_bytes=limits.max_bytes)
                    head.add(offset, chunk)
                    await parts.add(chunk)

                check_complete(total, declared=declared, head=head)
                last = parts.take()
                await parts.wait()
                await hash_chunks(digest, last.chunks, last.size_bytes)
                sha256 = digest.hexdigest()
                if request.sha256 and request.sha256 != sha256:
                    raise errors.ChecksumMismatch(declared=request.sha256, received=sha256)
                # Only now, with the whole stream checked, may the object become visible.
                await writer.finish(last.chunks)
            finally:
                await parts.stop()
            return StoredVideo(
                video_id=video_id, bucket=bucket, object_key=key, size_bytes=total, sha256=sha256
            )

    async def _cleanup(self, cleanup: Coroutine[Any, Any, None]) -> None:
        """Run a cleanup in its own task, so it finishes even if the caller is cancelled.

        The caller waits for it a few seconds at most: when storage is down the cleanup keeps
        retrying in the background while the client already gets its error.
        """
        task = asyncio.ensure_future(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.wait({task}, timeout=self._cleanup_wait_s)

    async def drain_cleanups(self, timeout_s: float | None = None) -> None:
        """Wait for cleanups still running (at shutdown, and in tests); those still running
        after `timeout_s` are cancelled, so none outlives the storage client it uses. Their
        multipart uploads are left to the store's own expiry of stale uploads."""
        if not self._cleanups:
            return
        _, pending = await asyncio.wait(set(self._cleanups), timeout=timeout_s)
        if pending:
            log.warning("abandoning unfinished upload cleanups", extra={"count": len(pending)})
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class _Unknown(enum.Enum):
    UNKNOWN = "unknown"


_UNKNOWN = _Unknown.UNKNOWN


class _CancelledAfterCommit(asyncio.CancelledError):
    """The upload was cancelled after its event was written: the object must stay."""

    def __init__(self, event: OutboxEvent) -> None:
        super().__init__()
        self.event = event
