"""One WriteUpload stream: bytes from an offset, cut into the session's parts, each part
stored in the multipart upload and then committed (a unique insert), in order.

Part n covers the file bytes [(n-1) * part_bytes, n * part_bytes); the last part is shorter.
`persisted_size` is the end of the last committed part, so it moves only at part boundaries
and a cut loses at most the part being collected: when the stream breaks, the part in flight
is still given the chance to become durable. The parts are collected and sent by the part
sender that UploadVideo uses too (part_sender.py, with exact part boundaries): memory is two
parts, one in flight while the next is collected.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import google_crc32c

from .. import errors
from ..errors import MultipartUploadMissing
from ..ports import MultipartStorage, PartCommit, UploadSession, UploadSessionStore
from ..rules import VideoHead
from .failpoints import Failpoint, no_failpoint
from .memory import StreamMemory
from .part_sender import Part, PartSender, write_hashing

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
        # CRC32C of bytes [0, persisted).
        self._running = next(
            (p.running_crc32c for p in parts if p.offset + p.size_bytes == self.persisted), 0
        )
        # SHA-256 of bytes [0, persisted), when this process saw all of them; else None.
        self.digest = digest
        self.received_bytes = 0

    async def write(
        self,
        first: WriteChunk,
        rest: AsyncIterator[WriteChunk],
        *,
        memory: StreamMemory | None = None,
    ) -> bool:
        """Store the stream's bytes, buffered in `memory`; True when it asked to finish (the
        last part is then durable too), False when it ended without (what was collected past
        the last part boundary is dropped). Raises the offset, size and checksum errors."""
        size = self._session.size_bytes
        if first.offset > self.persisted:
            raise errors.UploadOffsetOutOfRange(
                f"записано {self.persisted} байт, запрошено {first.offset}",
                persisted_size=self.persisted,
            )
        parts = PartSender(
            self._store,
            part_bytes=self._session.part_bytes,
            offset=self.persisted,
            exact=True,
            memory=memory,
        )
        expected = first.offset
        head = VideoHead()
        finished = False
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
                    await parts.settle(IN_FLIGHT_GRACE_S)
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
                collected = parts.end
                if expected > collected:  # bytes before `collected` are stored already
                    skip = collected - chunk.offset
                    piece = data[skip:] if skip > 0 else data
                    head.add(collected, piece, last=expected == size)
                    await parts.add(piece)
                chunk = await anext(rest, None)

            if not finished:
                await parts.wait()
                return False
            if expected != size:
                raise errors.UploadBeyondSize(
                    f"файл {size} байт, завершение на {expected}", persisted_size=self.persisted
                )
            await parts.flush()
            await parts.wait()
            return True
        finally:
            await parts.settle(IN_FLIGHT_GRACE_S)

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

    async def _upload_part(self, number: int, chunks: list[bytes]) -> str:
        session = self._session
        try:
            multipart_id = await self._multipart()
            return await self._storage.upload_part(
                session.bucket, session.object_key, multipart_id, number, chunks
            )
        except MultipartUploadMissing:
            raise errors.UploadNotFound() from None

    async def _store(self, part: Part) -> None:
        """Upload one part (hashing it meanwhile), then commit it; the parts come in order,
        each after the one before is committed."""
        session = self._session
        number = part.offset // session.part_bytes + 1
        crc = _crc32c(0, part.chunks)
        running = _crc32c(self._running, part.chunks)
        digest = self.digest.copy() if self.digest is not None else None
        etag = await write_hashing(digest, part, self._upload_part(number, part.chunks))
        self._failpoint("after_part")
        await self._confirm()
        commit = PartCommit(
            number=number,
            offset=part.offset,
            size_bytes=part.size_bytes,
            etag=etag,
            crc32c=crc,
            running_crc32c=running,
        )
        recorded = await self._sessions.commit_part(session.upload_id, commit)
        self._failpoint("after_commit")
        if recorded.etag != etag or recorded.size_bytes != part.size_bytes:
            self.digest = None
            log.error(
                "part committed with another etag",
                extra={"upload_id": session.upload_id, "part": number},
            )
            raise errors.UploadPartConflict(part=str(number))
        self.persisted = part.offset + part.size_bytes
        self._running = running
        self.digest = digest


def _crc32c(crc: int, chunks: list[bytes]) -> int:
    """`crc` (a CRC32C) extended by the chunks."""
    for chunk in chunks:
        crc = google_crc32c.extend(crc, chunk)
    return crc
