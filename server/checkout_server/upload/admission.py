"""Admission: which upload streams may run now and what they may hold. One per process, built
by the wiring and shared by UploadVideo (gRPC and REST) and resumable writes.

It owns
- concurrency: UPLOAD_MAX_CONCURRENT streams at once; one more is refused (TooManyUploads),
  not queued;
- rate: the uploads each authenticated client starts (UPLOAD_RATE_PER_MINUTE), refused with a
  retry hint (UploadRateLimited); clients without an owner (authentication off) are not
  limited;
- memory: the budget all streams' buffers share; a stream waits for its two parts before it
  reads its first chunk (backpressure through gRPC flow control, not an error);
- interrupts: at the end of a stop's grace period every stream still running is cancelled
  and new ones are refused, so that each is answered SHUTTING_DOWN by its own handler.

Every stream is admitted for its client (`owner`) and is held as an `AdmittedStream` while it
runs: the place where limits per client and on idle streams go when they come.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from .. import errors
from ..ports import UploadRateLimit
from .interrupts import StreamInterrupts
from .limits import UploadLimits
from .memory import MemoryBudget


@dataclass(frozen=True)
class AdmittedStream:
    """One stream admitted, for its block."""

    owner: str  # the authenticated client ("" with authentication off)
    task: asyncio.Task[object]
    _interrupts: StreamInterrupts

    def interrupted(self) -> bool:
        """Whether the CancelledError the stream got is the interrupt's alone (not also its
        client's, its deadline's or gRPC's): then it answers SHUTTING_DOWN."""
        return self._interrupts.caused(self.task)


class Admission:
    """Admits upload streams within the limits of `limits` and the per-client `rate_limit`."""

    def __init__(self, limits: UploadLimits, *, rate_limit: UploadRateLimit | None = None) -> None:
        self._max_concurrent = limits.max_concurrent
        self._rate_limit = rate_limit
        self._interrupts = StreamInterrupts()
        self.memory = MemoryBudget(limits.memory_budget_bytes)
        # For the metrics: streams running now, uploads refused as too many or too fast.
        self.uploads_in_flight = 0
        self.writes_in_flight = 0
        self.refused_total = 0
        self.rate_limited_total = 0

    async def admit_client(self, owner: str) -> None:
        """Count one upload (an UploadVideo, a resumable session's start) against its owner's
        rate, or raise UploadRateLimited with the wait."""
        if self._rate_limit is None or not owner:
            return
        wait_s = await self._rate_limit.admit(owner)
        if wait_s is not None:
            self.rate_limited_total += 1
            raise errors.UploadRateLimited(round(wait_s, 3), client=owner)

    @contextlib.asynccontextmanager
    async def upload(self, owner: str) -> AsyncIterator[AdmittedStream]:
        """An UploadVideo stream for the block. Refused (TooManyUploads, counted in
        `refused_total`) when max_concurrent UploadVideo streams run already, then counted
        against its owner's rate; ShuttingDown once interrupted."""
        if self.uploads_in_flight >= self._max_concurrent:
            self.refused_total += 1
            raise errors.TooManyUploads(limit=str(self._max_concurrent))
        await self.admit_client(owner)
        with self._running(owner, write=False) as stream:
            yield stream

    @contextlib.asynccontextmanager
    async def write(self, owner: str) -> AsyncIterator[AdmittedStream]:
        """A resumable write for the block. Refused (TooManyUploads) when UploadVideo streams
        and writes together reach max_concurrent; its session was counted against the rate
        when it started. ShuttingDown once interrupted."""
        if self.writes_in_flight + self.uploads_in_flight >= self._max_concurrent:
            raise errors.TooManyUploads(limit=str(self._max_concurrent))
        with self._running(owner, write=True) as stream:
            yield stream

    @contextlib.contextmanager
    def _running(self, owner: str, *, write: bool) -> Iterator[AdmittedStream]:
        """An admitted stream, counted while it runs and interrupted by `interrupt`."""
        if write:
            self.writes_in_flight += 1
        else:
            self.uploads_in_flight += 1
        try:
            with self._interrupts.stream() as task:
                yield AdmittedStream(owner, task, self._interrupts)
        finally:
            if write:
                self.writes_in_flight -= 1
            else:
                self.uploads_in_flight -= 1

    @contextlib.asynccontextmanager
    async def buffers(self, *, part_bytes: int, size_bytes: int) -> AsyncIterator[None]:
        """The memory of one stream for the block: two parts (the one in flight and the one
        being collected), less for a file smaller than a part (`size_bytes`, 0: unknown).
        Waits while the budget is spent."""
        reserved = 2 * min(part_bytes, size_bytes or part_bytes)
        await self.memory.reserve(reserved)
        try:
            yield
        finally:
            await self.memory.release(reserved)

    def interrupt(self) -> int:
        """Cancel every stream still running and refuse new ones (the end of a stop's grace
        period); how many were running."""
        return self._interrupts.interrupt()
