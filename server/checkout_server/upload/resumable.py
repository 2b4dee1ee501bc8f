"""Resumable uploads: sessions that any replica can continue from their last durable byte,
modelled on the Cloud Storage v2 write API (StartResumableWrite, WriteObject with
`write_offset` and `finish_write`, QueryWriteStatus, CancelResumableWrite).

A session is a set of insert-once facts (ports.UploadSessionStore): the session, its S3
multipart upload id, one commit per durable part, and the end claimed first. Finishing is
idempotent and ends in the same outbox event as UploadVideo (`_id` = video id, so one event
however often finish is retried):

1. every part committed, the declared CRC32C (if any) checked against the running one;
2. the FINISH end claimed (it excludes cancel and expiry from then on);
3. the multipart upload completed (or, after a crash, found complete: the object exists with
   the declared size; an upload that vanished with no object is never taken for finished);
4. the SHA-256: this process's digest when it saw every byte, else the object read back;
   a mismatch with the declared one removes the object and the session;
5. the outbox event.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .. import errors
from ..domain import (
    VIDEO_CONTENT_TYPE,
    OutboxEvent,
    UploadRequest,
    UploadResult,
    input_object_key,
)
from ..errors import DuplicateIdempotencyKey, DuplicateUploadSession, MultipartUploadMissing
from ..ports import MultipartStorage, Outbox, SessionEnd, UploadSession, UploadSessionStore
from ..rules import check_same_file
from .admission import Admission
from .failpoints import Failpoint, no_failpoint
from .lease import HeldLease, WriteLeases
from .limits import UploadLimits
from .session_writer import SessionWriter, WriteChunk, persisted_size

log = logging.getLogger(__name__)

S3_MAX_PARTS = 10_000
_MiB = 1024 * 1024
# In-process SHA-256 states kept for sessions that may come back to this process.
MAX_DIGESTS = 1024


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _no_trace() -> str:
    return ""


def part_bytes_for(size_bytes: int, minimum: int) -> int:
    """The session's part size: at least `minimum`, in whole MiB, under 10,000 parts."""
    needed = math.ceil(size_bytes / S3_MAX_PARTS)
    return max(minimum, math.ceil(needed / _MiB) * _MiB)


@dataclass(frozen=True, kw_only=True)
class SessionState:
    """What a client learns of a session: where to write from, or the finished upload."""

    session: UploadSession | None  # None for a result an UploadVideo made with the key
    persisted_size: int
    result: UploadResult | None = None


@dataclass
class _Digest:
    offset: int
    digest: hashlib._Hash


class ResumableUploads:
    """Starts, writes, reports and cancels resumable upload sessions."""

    def __init__(
        self,
        *,
        sessions: UploadSessionStore,
        storage: MultipartStorage,
        outbox: Outbox,
        limits: UploadLimits,
        admission: Admission,
        leases: WriteLeases,
        session_ttl_s: float,
        clock: Callable[[], datetime] = _utcnow,
        traceparent: Callable[[], str] = _no_trace,
        failpoint: Failpoint = no_failpoint,
    ) -> None:
        """`limits` and `admission` are UploadVideo's: sessions are checked by the same
        rules, and a stop interrupts writes with the uploads. `failpoint` is called at the
        crash points of upload/failpoints.py (tests)."""
        self._failpoint = failpoint
        self._sessions = sessions
        self._storage = storage
        self._outbox = outbox
        self._limits = limits
        self._admission = admission
        self._leases = leases
        self._ttl = timedelta(seconds=session_ttl_s)
        self._clock = clock
        self._traceparent = traceparent
        self._digests: collections.OrderedDict[str, _Digest] = collections.OrderedDict()
        self.bytes_received_total = 0

    # --- Start, status, cancel ------------------------------------------------------------

    async def start(
        self, request: UploadRequest, *, crc32c: int | None, client: str = ""
    ) -> SessionState:
        """A new session, or the session (or finished upload) of a repeated idempotency key.
        `client` (the owner when not given) may have UPLOAD_MAX_OPEN_SESSIONS_PER_CLIENT open
        (TooManyUploadSessions); a new session counts against its owner's rate."""
        if request.size_bytes <= 0:
            raise errors.UploadSizeRequired()
        bucket = self._limits.check(request)
        if request.idempotency_key:
            replay = await self._replay(request)
            if replay is not None:
                return replay
        now = self._clock()
        client = client or request.owner
        if self._limits.max_open_sessions_per_client:
            self._admission.admit_session(await self._sessions.open_sessions(client, now))
        await self._admission.admit_client(request.owner)
        video_id = str(uuid.uuid4())
        session = UploadSession(
            upload_id=str(uuid.uuid4()),
            video_id=video_id,
            bucket=bucket,
            object_key=input_object_key(video_id),
            filename=request.filename,
            size_bytes=request.size_bytes,
            sha256=request.sha256,
            crc32c=crc32c,
            idempotency_key=request.idempotency_key,
            owner=request.owner,
            part_bytes=part_bytes_for(request.size_bytes, self._limits.part_bytes),
            created_at=now,
            expires_at=now + self._ttl,
            client=client,
        )
        try:
            await self._sessions.create(session)
        except DuplicateUploadSession as duplicate:  # a concurrent start with the same key
            return await self._same_session(request, duplicate.existing)
        log.info("upload session started", extra={"upload_id": session.upload_id})
        return SessionState(session=session, persisted_size=0)

    async def _replay(self, request: UploadRequest) -> SessionState | None:
        key, owner = request.idempotency_key, request.owner
        event = await self._outbox.find_by_idempotency_key(key, owner=owner)
        session = await self._sessions.find_by_idempotency_key(key, owner=owner)
        if event is not None:
            check_same_file(request, event)
            return SessionState(
                session=session,
                persisted_size=event.size_bytes,
                result=UploadResult(event=event, deduplicated=True),
            )
        if session is None:
            return None
        if self._clock() >= session.expires_at:
            await self.expire(session)  # a new session may take the key now...
            event = await self._outbox.find_by_idempotency_key(key, owner=owner)
            if event is None:
                return None
            check_same_file(request, event)  # ...unless it finished on the way out
            return SessionState(
                session=None,
                persisted_size=event.size_bytes,
                result=UploadResult(event=event, deduplicated=True),
            )
        return await self._same_session(request, session)

    async def _same_session(self, request: UploadRequest, session: UploadSession) -> SessionState:
        if (request.size_bytes != session.size_bytes) or (
            request.sha256 and request.sha256 != session.sha256
        ):
            raise errors.IdempotencyKeyReused(upload_id=session.upload_id)
        return await self._state(session)

    async def status(self, upload_id: str, *, owner: str) -> SessionState:
        return await self._state(await self._load(upload_id, owner))

    async def _state(self, session: UploadSession) -> SessionState:
        claimed = await self._sessions.ending(session.upload_id)
        if claimed in (SessionEnd.CANCEL, SessionEnd.EXPIRE):
            raise errors.UploadNotFound()
        event = await self._outbox.get(session.video_id)
        if event is not None:
            return SessionState(
                session=session, persisted_size=session.size_bytes, result=UploadResult(event=event)
            )
        if claimed is None and self._clock() >= session.expires_at:
            raise errors.UploadNotFound("срок сессии истёк")
        parts = await self._sessions.parts(session.upload_id)
        return SessionState(session=session, persisted_size=persisted_size(parts))

    async def cancel(self, upload_id: str, *, owner: str) -> None:
        session = await self._load(upload_id, owner)
        if await self._outbox.get(session.video_id) is not None:
            raise errors.UploadFinished()
        claimed = await self._sessions.end(upload_id, SessionEnd.CANCEL, self._clock())
        if claimed is SessionEnd.FINISH:
            raise errors.UploadFinished("загрузка завершается")
        if claimed is SessionEnd.EXPIRE:
            raise errors.UploadNotFound()
        await self.discard(session)
        log.info("upload session cancelled", extra={"upload_id": upload_id})

    async def expire(self, session: UploadSession) -> bool:
        """End a session past its TTL (the sweeper, and a start that meets one): True when it
        is expired and was removed now (by this call; another sweeper may have removed it
        too, which is harmless). One that began finishing is finished instead, once its
        writer has let go (its client asked for it; an upload that vanished is not)."""
        claimed = await self._sessions.end(session.upload_id, SessionEnd.EXPIRE, self._clock())
        if claimed is SessionEnd.FINISH:
            if await self._outbox.get(session.video_id) is None:
                try:
                    async with self._leases.hold(session.upload_id) as held:
                        await held.run(self._finish(session, held))
                except errors.ServiceError as exc:
                    log.warning(
                        "finishing an abandoned upload failed: %s",
                        exc,
                        extra={"upload_id": session.upload_id, "reason": exc.reason},
                    )
                    if exc.retriable:
                        return False  # the next round tries again
                    await self.discard(session)  # it cannot finish (vanished, conflicting)
                    return True
            await self._sessions.delete(session.upload_id)  # finished: the event remains
            return False
        await self.discard(session)
        log.info("upload session expired", extra={"upload_id": session.upload_id})
        return claimed is SessionEnd.EXPIRE

    async def discard(self, session: UploadSession) -> None:
        """Abort the session's multipart upload and remove its facts (after its marker)."""
        multipart_id = await self._sessions.multipart_of(session.upload_id)
        if multipart_id is not None:
            await self._storage.abort_multipart(session.bucket, session.object_key, multipart_id)
        self._digests.pop(session.upload_id, None)
        await self._sessions.delete(session.upload_id)

    async def _load(self, upload_id: str, owner: str) -> UploadSession:
        try:
            uuid.UUID(upload_id)
        except ValueError:
            raise errors.InvalidUploadId() from None
        session = await self._sessions.get(upload_id)
        if session is None or session.owner != owner:
            raise errors.UploadNotFound()
        return session

    # --- Writing --------------------------------------------------------------------------

    async def write(
        self, upload_id: str, chunks: AsyncIterator[WriteChunk], *, owner: str, client: str = ""
    ) -> SessionState:
        """Write one stream; the new state (with the result when it finished the upload).
        `client` is who the limits per client count it for (the owner when not given). A
        stream is cut after UPLOAD_MAX_DURATION_S (WriteTooLong); what it committed stays."""
        session = await self._load(upload_id, owner)
        first = await anext(chunks, None)
        if first is None:
            return await self._state(session)
        max_duration_s = self._limits.max_duration_s
        async with self._admission.write(client or owner) as stream:
            deadline = asyncio.timeout(max_duration_s)
            try:
                async with deadline, self._leases.hold(upload_id) as held:
                    return await held.run(self._write(session, held, first, chunks))
            except (asyncio.CancelledError, TimeoutError) as cancelled:
                # What was committed stays: the client resumes from its persisted size.
                stopped = cancelled.persisted if isinstance(cancelled, _WriteStopped) else None
                if deadline.expired():
                    raise errors.WriteTooLong(
                        f"дольше {max_duration_s:g} с", persisted_size=stopped
                    ) from None
                if isinstance(cancelled, TimeoutError) or not stream.interrupted():
                    raise  # cancelled by its client, its deadline or the server's own stop
                raise errors.WriteInterrupted(persisted_size=stopped) from None

    async def _write(
        self,
        session: UploadSession,
        held: HeldLease,
        first: WriteChunk,
        chunks: AsyncIterator[WriteChunk],
    ) -> SessionState:
        upload_id = session.upload_id
        state = await self._state(session)
        if state.result is not None:
            return SessionState(
                session=session,
                persisted_size=state.persisted_size,
                result=UploadResult(event=state.result.event, deduplicated=True),
            )
        if await self._sessions.ending(upload_id) is SessionEnd.FINISH:
            return await self._finish(session, held)  # a finish that broke off: go on
        parts = await self._sessions.parts(upload_id)
        persisted = persisted_size(parts)
        writer = SessionWriter(
            session=session,
            sessions=self._sessions,
            storage=self._storage,
            parts=parts,
            multipart_id=await self._sessions.multipart_of(upload_id),
            digest=self._digest_at(upload_id, persisted),
            confirm=lambda: self._confirm(held, upload_id),
            content_type=VIDEO_CONTENT_TYPE,
            failpoint=self._failpoint,
        )
        try:
            async with self._admission.buffers(part_bytes=session.part_bytes) as memory:
                try:
                    finished = await writer.write(first, chunks, memory=memory)
                except (errors.UploadStalled, errors.UploadMemoryBusy) as cut:
                    cut.metadata["persisted_size"] = str(writer.persisted)  # where to resume
                    raise
                finally:
                    self.bytes_received_total += writer.received_bytes
                    self._keep_digest(upload_id, writer.persisted, writer.digest)
        except asyncio.CancelledError:
            # What was committed stays.
            raise _WriteStopped(writer.persisted) from None
        if not finished:
            return SessionState(session=session, persisted_size=writer.persisted)
        return await self._finish(session, held)

    async def _confirm(self, held: HeldLease, upload_id: str) -> None:
        """Before each commit: the lease is still this stream's and the session still open
        (an extra guard against wasted work; commits are safe without it)."""
        await self._leases.confirm(held)
        if await self._sessions.get(upload_id) is None or await self._sessions.ending(
            upload_id
        ) in (SessionEnd.CANCEL, SessionEnd.EXPIRE):
            raise errors.UploadNotFound()

    def _digest_at(self, upload_id: str, offset: int) -> hashlib._Hash | None:
        if offset == 0:
            return hashlib.sha256()
        kept = self._digests.get(upload_id)
        if kept is None or kept.offset != offset:
            return None  # another process wrote some bytes: the object is read back
        return kept.digest.copy()

    def _keep_digest(self, upload_id: str, offset: int, digest: hashlib._Hash | None) -> None:
        self._digests.pop(upload_id, None)
        if digest is not None:
            self._digests[upload_id] = _Digest(offset, digest)
            while len(self._digests) > MAX_DIGESTS:
                self._digests.popitem(last=False)

    # --- Finishing ------------------------------------------------------------------------

    async def _finish(self, session: UploadSession, held: HeldLease) -> SessionState:
        held.finishing = True  # from here this stream never lets go when asked
        upload_id = session.upload_id
        parts = await self._sessions.parts(upload_id)
        if persisted_size(parts) != session.size_bytes:
            raise errors.UploadBeyondSize(
                "не все части записаны", persisted_size=persisted_size(parts)
            )
        parts = [p for p in parts if p.offset < session.size_bytes]
        if session.crc32c is not None and parts[-1].running_crc32c != session.crc32c:
            await self._end_and_discard(session)
            raise errors.FileChecksumMismatch()
        kept = self._digests.get(upload_id)
        sha256 = kept.digest.hexdigest() if kept and kept.offset == session.size_bytes else ""
        if sha256 and session.sha256 and sha256 != session.sha256:
            await self._end_and_discard(session)
            raise errors.ChecksumMismatch(declared=session.sha256, received=sha256)
        claimed = await self._sessions.end(upload_id, SessionEnd.FINISH, self._clock())
        if claimed is not SessionEnd.FINISH:
            raise errors.UploadNotFound()
        await self._complete(session, [(p.number, p.etag) for p in parts])
        self._failpoint("after_complete")
        if not sha256:
            found = await self._storage.object_sha256(session.bucket, session.object_key)
            if found is None:
                raise errors.UploadNotFound("объект исчез")
            sha256 = found[1]
            if session.sha256 and sha256 != session.sha256:
                await self._storage.delete_object(session.bucket, session.object_key)
                await self.discard(session)
                raise errors.ChecksumMismatch(declared=session.sha256, received=sha256)
        result = await self._record(session, sha256)
        self._digests.pop(upload_id, None)
        return SessionState(session=session, persisted_size=session.size_bytes, result=result)

    async def _end_and_discard(self, session: UploadSession) -> None:
        if await self._sessions.end(session.upload_id, SessionEnd.CANCEL, self._clock()) is (
            SessionEnd.CANCEL
        ):
            await self.discard(session)

    async def _complete(self, session: UploadSession, parts: list[tuple[int, str]]) -> None:
        multipart_id = await self._sessions.multipart_of(session.upload_id)
        if multipart_id is not None:
            try:
                await self._storage.complete_multipart(
                    session.bucket, session.object_key, multipart_id, parts
                )
                return
            except MultipartUploadMissing:
                pass  # completed before a crash, or gone: the object tells
        size = await self._storage.object_size(session.bucket, session.object_key)
        if size != session.size_bytes:
            log.error("multipart upload vanished", extra={"upload_id": session.upload_id})
            raise errors.UploadNotFound("данные сессии исчезли из хранилища")

    async def _record(self, session: UploadSession, sha256: str) -> UploadResult:
        existing = await self._outbox.get(session.video_id)
        if existing is not None:
            return UploadResult(event=existing, deduplicated=True)
        event = OutboxEvent.new(
            event_id=session.video_id,
            video_id=session.video_id,
            bucket=session.bucket,
            object_key=session.object_key,
            size_bytes=session.size_bytes,
            now=self._clock(),
            filename=session.filename,
            sha256=sha256,
            idempotency_key=session.idempotency_key,
            traceparent=self._traceparent(),
            owner=session.owner,
        )
        try:
            await self._outbox.add(event)
            self._failpoint("after_outbox")
        except DuplicateIdempotencyKey as duplicate:
            if duplicate.existing.event_id == session.video_id:  # our own, from a retry
                return UploadResult(event=duplicate.existing, deduplicated=True)
            # An UploadVideo with the same key finished first: keep its result only.
            await self._storage.delete_object(session.bucket, session.object_key)
            return UploadResult(event=duplicate.existing, deduplicated=True)
        log.info(
            "video stored",
            extra={
                "event_id": event.event_id,
                "size_bytes": event.size_bytes,
                "upload_id": session.upload_id,
            },
        )
        return UploadResult(event=event)


class _WriteStopped(asyncio.CancelledError):
    """A write cancelled mid-stream, with the session's persisted size as it saw it then."""

    def __init__(self, persisted: int) -> None:
        super().__init__()
        self.persisted = persisted
