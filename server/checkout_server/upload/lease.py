"""The write lease of a resumable upload session: one stream at a time, on any replica.

A stream takes epoch n+1 of the session's leases by a unique insert (FerretDB 1.24's inserts
are atomic, its conditional updates are not), once epoch n is released, or its holder let go
after being asked, or its holder stopped renewing it (its `expires_at` plus the clock-skew
margin is past). The holder renews its lease every third of the TTL and, at the same time,
looks for a request to let go; it lets go unless it is finishing the upload. A stream whose
request is not honoured within the wait gets UPLOAD_BUSY (ABORTED).

Safety never rests on these clocks: a lease only keeps two streams from wasting each other's
work. What two writers cannot do is corrupt a session: every part is committed once (a
unique insert), and a commit whose ETag differs from the first is refused (upload/resumable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from .. import errors
from ..ports import UploadSessionStore, WriteLease

log = logging.getLogger(__name__)

T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class LeaseTimes:
    ttl_s: float = 10.0
    skew_s: float = 2.0
    # How long a stream waits for the holder to let go before UPLOAD_BUSY.
    takeover_wait_s: float = 15.0

    @property
    def renew_interval_s(self) -> float:
        return self.ttl_s / 3


class HeldLease:
    """A lease this process holds for one stream; `run` ends the stream when it is lost."""

    def __init__(self, lease: WriteLease) -> None:
        self.lease = lease
        self.finishing = False  # set while completing: the holder then never lets go
        self.lost = asyncio.Event()
        self.lost_reason = ""

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def run(self, work: Awaitable[T]) -> T:
        """Await `work` (in a task of its own); if the lease is lost first, cancel it and raise
        UploadTakenOver. Cancelled itself (the client went away, the server stops), it cancels
        the work too and waits for its end, so that nothing writes once the lease is released;
        it then raises the work's own CancelledError, which may say where the work stopped."""
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            while not task.done():  # bounded: the work's own waits end at its cancellation
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({task})
            if task.cancelled():
                try:
                    task.result()
                except asyncio.CancelledError as stopped:
                    raise stopped from None
            elif task.exception() is None:
                log.info("write finished as its stream was cancelled")
            raise
        finally:
            lost.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        log.info(
            "write lease lost",
            extra={"upload_id": self.lease.upload_id, "reason": self.lost_reason},
        )
        raise errors.UploadTakenOver(self.lost_reason)


class WriteLeases:
    """Takes, renews and releases the write leases of this process's streams."""

    def __init__(
        self,
        store: UploadSessionStore,
        *,
        process: str,
        times: LeaseTimes,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._process = process
        self._times = times
        self._clock = clock
        self._streams = 0

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[HeldLease]:
        """Hold the session's lease for the block: renewed meanwhile, released at the end."""
        self._streams += 1
        holder = f"{self._process}/{self._streams}"
        lease = await self._take(upload_id, holder)
        held = HeldLease(lease)
        renewer = asyncio.create_task(self._renew(held), name=f"lease-{upload_id}")
        try:
            yield held
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            # Released in its own task, so a cancelled stream still lets the next one in.
            release = asyncio.ensure_future(self._release(held.lease))
            await asyncio.shield(release)

    async def confirm(self, held: HeldLease) -> None:
        """Raise UploadTakenOver when a newer epoch exists (checked before each commit; an
        extra guard, not what safety rests on)."""
        latest = await self._store.latest_lease(held.lease.upload_id)
        if latest is not None and latest.epoch != held.lease.epoch:
            held.lose("a newer lease exists")
        if held.lost.is_set():
            raise errors.UploadTakenOver(held.lost_reason)

    async def _take(self, upload_id: str, holder: str) -> WriteLease:
        times = self._times
        deadline = time.monotonic() + times.takeover_wait_s
        asked: int | None = None
        delay = 0.05
        while True:
            latest = await self._store.latest_lease(upload_id)
            now = self._clock()
            free = (
                latest is None
                or latest.released
                or now > latest.expires_at + timedelta(seconds=times.skew_s)
            )
            if free:
                epoch = 1 if latest is None else latest.epoch + 1
                lease = WriteLease(
                    upload_id=upload_id,
                    epoch=epoch,
                    holder=holder,
                    expires_at=now + timedelta(seconds=times.ttl_s),
                )
                if await self._store.take_lease(lease):
                    return lease
            elif latest is not None and asked != latest.epoch:
                await self._store.ask_release(upload_id, latest.epoch, holder)
                asked = latest.epoch
            if time.monotonic() >= deadline:
                raise errors.UploadBusy()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _renew(self, held: HeldLease) -> None:
        """Every third of the TTL: renew, and let go when asked (unless finishing)."""
        while True:
            await asyncio.sleep(self._times.renew_interval_s)
            try:
                lease = held.lease
                latest = await self._store.latest_lease(lease.upload_id)
                if latest is not None and latest.epoch != lease.epoch:
                    held.lose("a newer lease exists")
                    return
                if not held.finishing and await self._store.release_asked(
                    lease.upload_id, lease.epoch
                ):
                    held.lose("another stream asked for the session")
                    return
                expires_at = self._clock() + timedelta(seconds=self._times.ttl_s)
                await self._store.renew_lease(lease, expires_at)
                held.lease = replace(lease, expires_at=expires_at)
            except errors.ServiceError as exc:  # the next round tries again
                log.warning("lease renewal failed: %s", exc, extra={"reason": exc.reason})

    async def _release(self, lease: WriteLease) -> None:
        try:
            await self._store.release_lease(lease)
        except errors.ServiceError as exc:  # the lease runs out on its own
            log.warning("lease release failed: %s", exc, extra={"reason": exc.reason})
