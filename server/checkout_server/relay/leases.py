"""Shard leases: which relay may publish which shard, built from unique inserts only.

A relay takes shard `s` by inserting the lease document (s, epoch + 1), where `epoch` is the
newest it found, once that one has expired (judged with the clock-skew margin) or been
released. The store's unique key lets exactly one relay win each epoch, on MongoDB and on
FerretDB 1.24 alike (whose updates do not re-check their filters, so they fence nothing).

The holder publishes the shard only while
- its own monotonic clock says the lease is still valid (`ttl - skew` after the last
  renewal started: a relay paused past its lease stops on its own when it wakes), and
- right before each batch, the shard's newest epoch is still its own (`confirm`).
A lease that ran out locally is never renewed again: the shard is dropped and taken anew.
Relays announce themselves with heartbeats; each holds at most its fair share of shards
(ceil(shards / live relays)) and releases the rest between batches, so shards spread out.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from .ports import Lease, LeaseStore

log = logging.getLogger(__name__)


class Clock(Protocol):
    def wall(self) -> datetime:
        """Now, as a tz-aware UTC datetime (what other relays compare with)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (and keeps running while paused)."""


class SystemClock:
    def wall(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class _Held:
    lease: Lease
    valid_until: float  # monotonic


class LeaseManager:
    """The shards this relay holds; `rebalance` and `renew` keep them, `confirm` fences."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        member: str,
        shards: int,
        ttl_s: float,
        skew_s: float,
        clock: Clock,
    ) -> None:
        if ttl_s <= 2 * skew_s:
            raise ValueError("the lease TTL must be more than twice the clock-skew margin")
        self._store = store
        self._member = member
        self._shards = shards
        self._ttl = timedelta(seconds=ttl_s)
        self._ttl_s = ttl_s
        self._skew = timedelta(seconds=skew_s)
        self._skew_s = skew_s
        self._clock = clock
        self._held: dict[int, _Held] = {}
        # Relays start their search for free shards at different places.
        self._offset = zlib.crc32(member.encode()) % shards
        self.lost_total = 0

    @property
    def member(self) -> str:
        return self._member

    @property
    def renew_interval_s(self) -> float:
        return self._ttl_s / 3

    def valid_shards(self) -> frozenset[int]:
        """Shards this relay may publish now, by its own clock."""
        now = self._clock.monotonic()
        return frozenset(s for s, h in self._held.items() if h.valid_until > now)

    def epoch_of(self, shard: int) -> int | None:
        held = self._held.get(shard)
        return None if held is None else held.lease.epoch

    async def confirm(self, shards: Iterable[int]) -> frozenset[int]:
        """Of these shards, those still held: locally valid and newest epoch our own. Shards
        with a newer epoch are dropped at once (another relay has taken them over)."""
        wanted = [s for s in set(shards) if s in self.valid_shards()]
        if not wanted:
            return frozenset()
        latest = await self._store.latest(wanted)
        self._drop_lost(latest)
        return frozenset(wanted) & self.valid_shards()

    async def renew(self) -> None:
        """Extend the leases still valid; drop those that ran out or were taken over."""
        if not self._held:
            return
        started = self._clock.monotonic()
        latest = await self._store.latest(list(self._held))
        self._drop_lost(latest)
        self._drop_expired(started)
        expires_at = self._clock.wall() + self._ttl
        renewed = dict(self._held)
        await self._store.renew([h.lease for h in renewed.values()], expires_at)
        for shard, held in renewed.items():
            current = self._held.get(shard)
            if current is not None and current.lease.epoch == held.lease.epoch:
                self._held[shard] = _Held(
                    replace(held.lease, expires_at=expires_at), self._valid_from(started)
                )

    async def rebalance(self) -> None:
        """Heartbeat, then release shards beyond the fair share or take free ones up to it.
        Call between batches only: a released shard must have nothing in flight."""
        now = self._clock.wall()
        await self._store.heartbeat(self._member, now + self._ttl)
        members = set(await self._store.members(now - self._skew)) | {self._member}
        fair = math.ceil(self._shards / len(members))
        latest = await self._store.latest(range(self._shards))
        self._drop_lost(latest)
        self._drop_expired(self._clock.monotonic())
        extra = len(self._held) - fair
        for shard in sorted(self._held, reverse=True)[: max(extra, 0)]:
            held = self._held.pop(shard)
            await self._store.release(held.lease, self._clock.wall())
            log.info("released shard", extra={"shard": shard, "epoch": held.lease.epoch})
        for shard in self._search_order():
            if len(self._held) >= fair:
                break
            if shard in self._held:
                continue
            current = latest.get(shard)
            if current is not None and not self._free(current, self._clock.wall()):
                continue
            await self._take(shard, 1 if current is None else current.epoch + 1)

    async def release_all(self) -> None:
        """Graceful stop: release every lease and leave (others take over at once)."""
        held, self._held = self._held, {}
        now = self._clock.wall()
        for h in held.values():
            await self._store.release(h.lease, now)
        await self._store.leave(self._member)

    def _free(self, lease: Lease, now: datetime) -> bool:
        return lease.released or now > lease.expires_at + self._skew

    async def _take(self, shard: int, epoch: int) -> None:
        started = self._clock.monotonic()
        lease = Lease(
            shard=shard, epoch=epoch, owner=self._member, expires_at=self._clock.wall() + self._ttl
        )
        if not await self._store.insert_lease(lease):
            return  # another relay won this epoch
        self._held[shard] = _Held(lease, self._valid_from(started))
        log.info("took shard", extra={"shard": shard, "epoch": epoch})
        await self._store.prune(shard, epoch)

    def _valid_from(self, started: float) -> float:
        # Others may take over once their clock passes expires_at + skew; with clocks at
        # most `skew` apart that is no earlier than `started + ttl`. Stop `skew` before it.
        return started + self._ttl_s - self._skew_s

    def _drop_lost(self, latest: dict[int, Lease]) -> None:
        for shard, held in list(self._held.items()):
            newest = latest.get(shard)
            if newest is not None and newest.epoch > held.lease.epoch:
                del self._held[shard]
                self.lost_total += 1
                log.warning(
                    "lost shard to a newer epoch",
                    extra={
                        "shard": shard,
                        "epoch": held.lease.epoch,
                        "newer_epoch": newest.epoch,
                        "owner": newest.owner,
                    },
                )

    def _drop_expired(self, now: float) -> None:
        for shard, held in list(self._held.items()):
            if held.valid_until <= now:
                del self._held[shard]
                self.lost_total += 1
                log.warning(
                    "lease ran out before renewal; dropping the shard",
                    extra={"shard": shard, "epoch": held.lease.epoch},
                )

    def _search_order(self) -> list[int]:
        return [(self._offset + i) % self._shards for i in range(self._shards)]
