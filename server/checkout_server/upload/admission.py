"""Admission: which upload streams may run now, what they may hold and how long they may keep
it. One per process, built by the wiring and shared by UploadVideo (gRPC and REST), resumable
sessions and their writes, so that one client cannot stall the others.

It owns
- concurrency: UPLOAD_MAX_CONCURRENT streams at once, UploadVideo streams and resumable
  writes together; one more is refused (TooManyUploads), not queued;
- concurrency per client: UPLOAD_MAX_CONCURRENT_PER_CLIENT streams of one client
  (TooManyClientUploads). The client is its API key's owner, or with authentication off its
  address (api/clients.py names it);
- rate: the uploads each authenticated client starts (UPLOAD_RATE_PER_MINUTE: an UploadVideo,
  a resumable session's start; not a session's writes, which continue an upload already
  counted), refused with a retry hint (UploadRateLimited); clients without an owner
  (authentication off) are not limited;
- open sessions per client: UPLOAD_MAX_OPEN_SESSIONS_PER_CLIENT (TooManyUploadSessions);
- memory: the budget all streams' buffers share; a stream reserves it in granules as its
  buffers fill and gives it back as its parts are stored, waiting UPLOAD_MEMORY_WAIT_S at most
  while the budget is spent (then UploadMemoryBusy, before or after some bytes were stored);
- pace: a client's stream that sends nothing for UPLOAD_IDLE_TIMEOUT_S, or too little over a
  window (UPLOAD_MIN_BYTES_PER_S), is cut (UploadStalled: pacing.py);
- interrupts: at the end of a stop's grace period every stream still running is cancelled
  and new ones are refused, so that each is answered SHUTTING_DOWN by its own handler.

Every refusal (and every stall) is counted by its reason in `refusals`, for the metrics.

Memory is reserved as data arrives rather than whole at the start: a stream holds what it
buffers (rounded up to a granule), so streams that send a little and stop hold a granule each,
not two parts, and cannot spend the budget of those that send. The price is that a stream may
be refused half-way: a resumable write then keeps what it committed and says where to resume,
an UploadVideo is removed and retried after the hint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .. import errors
from ..ports import UploadRateLimit
from .interrupts import StreamInterrupts
from .limits import UploadLimits
from .memory import MemoryBudget, StreamMemory
from .pacing import Pace, paced

T = TypeVar("T")

# A stream's memory grows and shrinks by this much (or by a part, if parts are smaller).
GRANULE_BYTES = 1024 * 1024

# What the admission refuses (or cuts) streams for, each counted in `Admission.refusals`.
REFUSAL_REASONS = tuple(
    error.reason
    for error in (
        errors.TooManyUploads,
        errors.TooManyClientUploads,
        errors.UploadRateLimited,
        errors.UploadMemoryBusy,
        errors.TooManyUploadSessions,
        errors.UploadStalled,
    )
)


@dataclass(frozen=True)
class AdmittedStream:
    """One stream admitted, for its block."""

    client: str  # who its caller is (api/clients.py)
    task: asyncio.Task[object]
    _interrupts: StreamInterrupts

    def interrupted(self) -> bool:
        """Whether the CancelledError the stream got is the interrupt's alone (not also its
        client's, its deadline's or gRPC's): then it answers SHUTTING_DOWN."""
        return self._interrupts.caused(self.task)


class Admission:
    """Admits upload streams within the limits of `limits` and the per-client `rate_limit`."""

    def __init__(self, limits: UploadLimits, *, rate_limit: UploadRateLimit | None = None) -> None:
        self._limits = limits
        self._rate_limit = rate_limit
        self._interrupts = StreamInterrupts()
        self._pace = Pace(
            idle_timeout_s=limits.idle_timeout_s,
            min_bytes_per_s=limits.min_bytes_per_s,
            window_s=limits.throughput_window_s,
        )
        self._per_client: collections.Counter[str] = collections.Counter()
        self.memory = MemoryBudget(limits.memory_budget_bytes)
        # For the metrics: streams running now, refusals and stalls by reason.
        self.uploads_in_flight = 0
        self.writes_in_flight = 0
        self.refusals: collections.Counter[str] = collections.Counter()

    @property
    def rate_limited_total(self) -> int:
        return self.refusals[errors.UploadRateLimited.reason]

    def streams_of(self, client: str) -> int:
        """Streams `client` runs now."""
        return self._per_client[client]

    def _refuse(self, error: errors.ServiceError) -> errors.ServiceError:
        self.refusals[error.reason] += 1
        return error

    async def admit_client(self, owner: str) -> None:
        """Count one upload (an UploadVideo, a resumable session's start) against its owner's
        rate, or raise UploadRateLimited with the wait."""
        if self._rate_limit is None or not owner:
            return
        wait_s = await self._rate_limit.admit(owner)
        if wait_s is not None:
            raise self._refuse(errors.UploadRateLimited(client=owner).retry_after(round(wait_s, 3)))

    def admit_session(self, open_sessions: int) -> None:
        """Refuse a client's new resumable session when it has `open_sessions` open already,
        the most it may (TooManyUploadSessions)."""
        limit = self._limits.max_open_sessions_per_client
        if limit and open_sessions >= limit:
            raise self._refuse(errors.TooManyUploadSessions(limit=str(limit)))

    @contextlib.asynccontextmanager
    async def upload(self, client: str, *, owner: str = "") -> AsyncIterator[AdmittedStream]:
        """An UploadVideo stream of `client` for the block, counted against its `owner`'s
        rate. Refused (TooManyUploads, TooManyClientUploads) when the process or the client
        runs as many streams as it may; ShuttingDown once interrupted."""
        self._check_concurrency(client)
        await self.admit_client(owner)
        with self._running(client, write=False) as stream:
            yield stream

    @contextlib.asynccontextmanager
    async def write(self, client: str) -> AsyncIterator[AdmittedStream]:
        """A resumable write of `client` for the block, limited as `upload` is; its session was
        counted against the rate when it started. ShuttingDown once interrupted."""
        self._check_concurrency(client)
        with self._running(client, write=True) as stream:
            yield stream

    def _check_concurrency(self, client: str) -> None:
        limits = self._limits
        if self.writes_in_flight + self.uploads_in_flight >= limits.max_concurrent:
            raise self._refuse(errors.TooManyUploads(limit=str(limits.max_concurrent)))
        if self._per_client[client] >= limits.max_concurrent_per_client:
            raise self._refuse(
                errors.TooManyClientUploads(limit=str(limits.max_concurrent_per_client))
            )

    @contextlib.contextmanager
    def _running(self, client: str, *, write: bool) -> Iterator[AdmittedStream]:
        """An admitted stream, counted while it runs and interrupted by `interrupt`."""
        if write:
            self.writes_in_flight += 1
        else:
            self.uploads_in_flight += 1
        self._per_client[client] += 1
        try:
            with self._interrupts.stream() as task:
                yield AdmittedStream(client, task, self._interrupts)
        finally:
            if write:
                self.writes_in_flight -= 1
            else:
                self.uploads_in_flight -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]

    @contextlib.asynccontextmanager
    async def buffers(self, *, part_bytes: int) -> AsyncIterator[StreamMemory]:
        """The memory of one stream (its parts of `part_bytes`) for the block, nothing reserved
        yet: its PartSender holds it as chunks arrive. Growing waits UPLOAD_MEMORY_WAIT_S at
        most while the budget is spent, then raises UploadMemoryBusy."""
        memory = StreamMemory(
            self.memory,
            granule_bytes=min(GRANULE_BYTES, part_bytes),
            wait_s=self._limits.memory_wait_s,
            busy=lambda: self._refuse(errors.UploadMemoryBusy()),
        )
        try:
            yield memory
        finally:
            await memory.close()

    def paced(self, items: AsyncIterator[T], *, size: Callable[[T], int]) -> AsyncIterator[T]:
        """A client's stream of messages (`size(item)` bytes each), cut with UploadStalled when
        it falls below the pace (UPLOAD_IDLE_TIMEOUT_S, UPLOAD_MIN_BYTES_PER_S)."""
        if self._pace.unlimited:
            return items
        return paced(items, self._pace, size=size, on_stall=self._stalled)

    def _stalled(self) -> None:
        self.refusals[errors.UploadStalled.reason] += 1

    def interrupt(self) -> int:
        """Cancel every stream still running and refuse new ones (the end of a stop's grace
        period); how many were running."""
        return self._interrupts.interrupt()
