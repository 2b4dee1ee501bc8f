"""One WriteUpload stream: bytes from an offset, cut into the session's parts, each part
stored in the multipart upload and then committed (a unique insert), in order.

Part n covers the file bytes [(n-1) * part_bytes, n * part_bytes); the last part is shorter.
`persisted_size` is the end of the last committed part, so it moves only at part boundaries
and a cut loses at most the part being collected: when the stream breaks, the part in flight
is still given the chance to become durable. Memory is two parts, as for UploadVideo: one in
flight while the next is collected (reading stops there, so gRPC flow control holds the
client back). Chunks are kept as received, never joined; a chunk that a part boundary cuts
is sliced there (one copy of that chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import google_crc32c

from .. import errors
from ..errors import MultipartUploadMissing
from ..ports import MultipartStorage, PartCommit, UploadSession, UploadSessionStore
from .failpoints import Failpoint, no_failpoint
from .pipeline import FTYP_HEADER_BYTES, check_ftyp, hash_chunks

log = logging.getLogger(__name__)

# How long a broken stream waits for its part in flight to become durable.
IN_FLIGHT_GRACE_S = 30.0


@dataclass(frozen=True, kw_only=True)
class WriteChunk:
    """One message of a write stream, as the domain sees it."""

    offset: int
    data: bytes
    crc32c: int | None = None
    finish: bool = False


def persisted_size(parts: list[PartCommit]) -> int:
    """Bytes from 0 covered by consecutive committed parts."""
    size = 0
    for part in parts:
        if part.offset != size:
            break
        size += part.size_bytes
    return size


class SessionWriter:
    """Writes one stream of a session whose lease this process holds."""

    def __init__(
        self,
        *,
        session: UploadSession,
        sessions: UploadSessionStore,
        storage: MultipartStorage,
        parts: list[PartCommit],
        multipart_id: str | None,
        digest: hashlib._Hash | None,
        confirm: Callable[[], Awaitable[None]],
        content_type: str,
        failpoint: Failpoint = no_failpoint,
    ) -> None:
        self._failpoint = failpoint
        self._session = session
        self._sessions = sessions
        self._storage = storage
        self._confirm = confirm
        self._content_type = content_type
        self._multipart_id = multipart_id
        self.persisted = persisted_size(parts)
        self._running = next(
            (p.running_crc32c for p in parts if p.offset + p.size_bytes == self.persisted), 0
        )
        # SHA-256 of bytes [0, persisted), when this process saw all of them; else None.
        self.digest = digest
        self._in_flight: asyncio.Task[None] | None = None
        self.received_bytes = 0

    async def write(self, first: WriteChunk, rest: AsyncIterator[WriteChunk]) -> bool:
        """Store the stream's bytes; True when it asked to finish (the last part is then
        durable too), False when it ended without (what was collected past the last part
        boundary is dropped). Raises the offset, size and checksum errors."""
        session = self._session
        size, part_bytes = session.size_bytes, session.part_bytes
        if first.offset > self.persisted:
            raise errors.UploadOffsetOutOfRange(
                f"записано {self.persisted} байт, запрошено {first.offset}",
                persisted_size=self.persisted,
            )
        pending: list[bytes] = []
        pending_bytes = 0
        part_crc = 0
        running = self._running  # CRC32C of the file up to the end of `pending`
        expected = first.offset
        head = b""
        finished = False
        start = self.persisted  # file offset of pending[0]
        try:
            chunk: WriteChunk | None = first
            while chunk is not None:
                if finished:
                    raise errors.UploadAlreadyFinishing()
                if chunk.offset != expected:
                    raise errors.UploadOffsetNotContiguous(
                        f"ожидалось {expected}, получено {chunk.offset}", expected=str(expected)
                    )
                data = chunk.data
                if chunk.crc32c is not None and google_crc32c.value(data) != chunk.crc32c:
                    await self._settle()
                    raise errors.ChunkChecksumMismatch(
                        persisted_size=self.persisted, offset=chunk.offset
                    )
                if chunk.offset + len(data) > size:
                    raise errors.UploadBeyondSize(
                        f"файл {size} байт, данные до {chunk.offset + len(data)}",
                        persisted_size=self.persisted,
                    )
                expected += len(data)
                self.received_bytes += len(data)
                finished = chunk.finish
                end_stored = start + pending_bytes
                if expected > end_stored:  # bytes before end_stored are stored already
                    skip = end_stored - chunk.offset
                    piece = data[skip:] if skip > 0 else data
                    if end_stored < FTYP_HEADER_BYTES:
                        head += piece[: FTYP_HEADER_BYTES - end_stored]
                        if len(head) >= FTYP_HEADER_BYTES or expected == size:
                            check_ftyp(head)
                    while piece:
                        room = part_bytes - pending_bytes
                        # Sliced (copied) only where a part boundary cuts the chunk.
                        taken, piece = (
                            (piece, b"") if len(piece) <= room else (piece[:room], piece[room:])
                        )
                        pending.append(taken)
                        pending_bytes += len(taken)
                        part_crc = google_crc32c.extend(part_crc, taken)
                        running = google_crc32c.extend(running, taken)
                        if pending_bytes == part_bytes:
                            await self._wait()
                            self._send(start, pending, part_crc, running)
                            start += pending_bytes
                            pending, pending_bytes, part_crc = [], 0, 0
                chunk = await anext(rest, None)

            if not finished:
                await self._wait()
                return False
            if expected != size:
                raise errors.UploadBeyondSize(
                    f"файл {size} байт, завершение на {expected}", persisted_size=self.persisted
                )
            if pending_bytes:
                await self._wait()
                self._send(start, pending, part_crc, running)
            await self._wait()
            return True
        finally:
            await self._settle()

    def _send(self, offset: int, chunks: list[bytes], crc: int, running: int) -> None:
        assert self._in_flight is None
        self._in_flight = asyncio.ensure_future(self._store(offset, chunks, crc, running))

    async def _wait(self) -> None:
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            await task

    async def _settle(self) -> None:
        """Let the part in flight finish (shielded from the stream's cancellation, for a
        while): what reached the server before a cut should become durable."""
        if self._in_flight is None:
            return
        task, self._in_flight = self._in_flight, None
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), IN_FLIGHT_GRACE_S)
        if not task.done():
            task.cancel()

    async def _multipart(self) -> str:
        if self._multipart_id is None:
            session = self._session
            created = await self._storage.create_multipart(
                session.bucket, session.object_key, self._content_type
            )
            recorded = await self._sessions.record_multipart(session.upload_id, created)
            if recorded != created:  # another writer's came first
                await self._storage.abort_multipart(session.bucket, session.object_key, created)
            self._multipart_id = recorded
        return self._multipart_id

    async def _store(self, offset: int, chunks: list[bytes], crc: int, running: int) -> None:
        session = self._session
        number = offset // session.part_bytes + 1
        size = sum(len(chunk) for chunk in chunks)
        digest = self.digest.copy() if self.digest is not None else None
        hashing = (
            asyncio.ensure_future(hash_chunks(digest, chunks, size)) if digest is not None else None
        )
        try:
            multipart_id = await self._multipart()
            etag = await self._storage.upload_part(
                session.bucket, session.object_key, multipart_id, number, chunks
            )
        except MultipartUploadMissing:
            raise errors.UploadNotFound() from None
        finally:
            if hashing is not None:
                await hashing
        self._failpoint("after_part")
        await self._confirm()
        commit = PartCommit(
            number=number,
            offset=offset,
            size_bytes=size,
            etag=etag,
            crc32c=crc,
            running_crc32c=running,
        )
        recorded = await self._sessions.commit_part(session.upload_id, commit)
        self._failpoint("after_commit")
        if recorded.etag != etag or recorded.size_bytes != size:
            self.digest = None
            log.error(
                "part committed with another etag",
                extra={"upload_id": session.upload_id, "part": number},
            )
            raise errors.UploadPartConflict(part=str(number))
        self.persisted = offset + size
        self.digest = digest
