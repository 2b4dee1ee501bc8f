"""Chunks collected into storage parts, one part in flight: UploadVideo (gRPC and REST) and
resumable writes send their bytes through it.

Chunks are collected until they make a part, which is handed to the writer's `store` in a
task of its own while the next part is collected; that next part is sent only once the one in
flight is stored, so reading stops there and gRPC flow control holds the client back. Memory
per stream is thus about two parts. Chunks are kept as received, never joined into one more
copy; with `exact` parts (a resumable session's part n covers the file bytes
[(n-1) * part_bytes, n * part_bytes)) a chunk that a part boundary cuts is sliced there (one
copy of that chunk), else a part is sent as soon as it reaches `part_bytes` and is at most
one chunk larger.

The SHA-256 of a stream is computed part by part beside the part's upload (`write_hashing`),
in a worker thread for large parts (hashlib releases the GIL).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .memory import StreamMemory

T = TypeVar("T")

# Buffers at least this large are hashed in a worker thread; smaller ones on the loop (a
# thread hop costs more than hashing them).
_THREAD_HASH_BYTES = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Part:
    """One part of a stream: its chunks as received (or sliced at a part boundary)."""

    offset: int  # in the file, of its first byte
    chunks: list[bytes]
    size_bytes: int


class PartSender:
    """Collects one stream's chunks into parts and sends each to `store`, at most one in flight.

    `store(part)` runs in a task of its own; parts reach it in file order, each only after the
    one before has been stored (its task ended without an error). Its error is raised by the
    sender's next `add`, `flush` or `wait`, or at once by `raise_if_failed`."""

    def __init__(
        self,
        store: Callable[[Part], Awaitable[None]],
        *,
        part_bytes: int,
        offset: int = 0,
        exact: bool = False,
        memory: StreamMemory | None = None,
    ) -> None:
        """`offset`: the file offset of the first byte added. `exact`: every part but the last
        is `part_bytes` long (chunks are sliced at the boundaries), else parts end with the
        chunk that makes them reach `part_bytes`. `memory`: what the stream's buffers are
        held in (its error is raised by `add`); None: not counted."""
        self._store = store
        self._part_bytes = part_bytes
        self._exact = exact
        self._start = offset  # file offset of the part being collected
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._in_flight: asyncio.Task[None] | None = None
        self._memory = memory

    @property
    def end(self) -> int:
        """The file offset just past the bytes added so far."""
        return self._start + self._pending_bytes

    async def add(self, data: bytes) -> None:
        """Collect `data`; a part it fills is sent once the part in flight is stored."""
        while data:
            if self._exact:
                room = self._part_bytes - self._pending_bytes
                # Sliced (copied) only where a part boundary cuts the chunk.
                taken, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            else:
                taken, data = data, b""
            if self._memory is not None:
                await self._memory.hold(len(taken))
            self._pending.append(taken)
            self._pending_bytes += len(taken)
            if self._pending_bytes >= self._part_bytes:
                await self._send()

    async def flush(self) -> None:
        """Send what is collected as the last part, if anything is."""
        if self._pending_bytes:
            await self._send()

    def take(self) -> Part:
        """What is collected and not sent (the last part, which the caller stores itself);
        the sender holds nothing after."""
        part = Part(offset=self._start, chunks=self._pending, size_bytes=self._pending_bytes)
        self._start += self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        return part

    async def _send(self) -> None:
        await self.wait()  # the part in flight is stored: its memory is free
        part = self.take()  # the list is the store's from now
        self._in_flight = asyncio.ensure_future(self._stored(part))

    async def _stored(self, part: Part) -> None:
        """Store `part`, then free its memory (a failed part's is freed with the stream's)."""
        await self._store(part)
        if self._memory is not None:
            await self._memory.free(part.size_bytes)

    def raise_if_failed(self) -> None:
        """Raise the error of the part in flight if it has failed already."""
        if self._in_flight is not None and self._in_flight.done():
            self._in_flight.result()

    async def wait(self) -> None:
        """Wait until the part in flight is stored; raise its error."""
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            await task

    async def stop(self) -> None:
        """Cancel the part in flight, if any, and wait until it has stopped (before an abort)."""
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def settle(self, grace_s: float) -> None:
        """Let the part in flight finish, shielded from the caller's cancellation, for `grace_s`
        at most (then it is cancelled): what reached the server before a cut should become
        durable. Its error is not raised."""
        if self._in_flight is None:
            return
        task, self._in_flight = self._in_flight, None
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        if not task.done():
            task.cancel()


async def write_hashing(digest: hashlib._Hash | None, part: Part, write: Awaitable[T]) -> T:
    """`write` (the part's upload), with the part's chunks hashed into `digest` meanwhile (None:
    not hashed). A failed write is raised at once and its hashing cancelled (a worker thread
    may finish that on its own): `digest` is then no longer to be read."""
    if digest is None:
        return await write
    hashing = asyncio.ensure_future(hash_chunks(digest, part.chunks, part.size_bytes))
    try:
        written = await write
    except BaseException:
        hashing.cancel()
        raise
    await hashing
    return written


async def hash_chunks(digest: hashlib._Hash, chunks: list[bytes], size_bytes: int) -> None:
    """Add `chunks` (`size_bytes` together) to `digest`, in a worker thread when large."""
    if size_bytes >= _THREAD_HASH_BYTES:
        await asyncio.to_thread(_update, digest, chunks)
    else:
        _update(digest, chunks)


def _update(digest: hashlib._Hash, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)
