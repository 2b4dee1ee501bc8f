"""The publishing loop: due events of the shards held -> Kafka -> `sent`, and the sweeper.

One loop per relay, one batch at a time (bounded by RELAY_BATCH_SIZE): fetch the due `new`
events of the held shards, confirm the leases, publish, then mark the outcome. An event is
marked `sent` only after Kafka acknowledged it; a crash between the two republishes the batch
(at least once; consumers deduplicate by event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from ..errors import DatabaseUnavailable
from .envelope import EnvelopeError, build_message
from .leases import Clock, LeaseManager
from .metrics import RelayMetrics
from .ports import (
    Delivery,
    Message,
    OutboxRelayStore,
    Outcome,
    PendingEvent,
    Publisher,
    PublisherUnavailable,
)
from .sharding import relay_slot, shard_of_slot, slot_ranges

log = logging.getLogger(__name__)

IDLE_POLL_MIN_S = 0.01
LAG_INTERVAL_S = 5.0


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    shards: int
    batch_size: int = 200
    poll_interval_s: float = 0.2
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    sent_retention_s: float = 3600.0
    sweep_interval_s: float = 60.0
    sweep_batch: int = 1_000


class Backoff:
    """Capped exponential backoff with full jitter: uniform in [d/2, d], d doubling."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial = initial_s
        self._max = max_s
        self._rng = rng or random.Random()
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self._max, self._initial * 2 ** min(self._failures, 30))
        self._failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._failures = 0


class Relay:
    def __init__(
        self,
        *,
        store: OutboxRelayStore,
        leases: LeaseManager,
        publisher: Publisher,
        metrics: RelayMetrics,
        config: RelayConfig,
        clock: Clock,
    ) -> None:
        self._store = store
        self._leases = leases
        self._publisher = publisher
        self._metrics = metrics
        self._config = config
        self._clock = clock
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._db_backoff = Backoff(0.2, 5.0)
        # Messages without a slot come only from before slots existed (the seed service's
        # outbox): backfill them at start-up until none is left, then never query again.
        self._backfilled = False

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; then finish the batch in flight, flush the producer
        and release the leases. Never returns early for a transient error."""
        helpers = [
            asyncio.create_task(self._every(self._leases.renew_interval_s, stop, self._renew)),
            asyncio.create_task(self._every(LAG_INTERVAL_S, stop, self._measure_lag)),
        ]
        if self._config.sent_retention_s > 0:
            helpers.append(
                asyncio.create_task(self._every(self._config.sweep_interval_s, stop, self.sweep))
            )
        try:
            await self._loop(stop)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._publisher.close()
            try:
                await self._leases.release_all()
            except DatabaseUnavailable:
                log.warning("could not release leases; they expire on their own")
            self._metrics.shards_held = 0
            log.info("relay stopped")

    async def _loop(self, stop: asyncio.Event) -> None:
        idle_s = IDLE_POLL_MIN_S
        next_rebalance = 0.0
        while not stop.is_set():
            pause = 0.0
            try:
                if self._clock.monotonic() >= next_rebalance:
                    await self._leases.rebalance()
                    if not self._backfilled:
                        found = await self._store.backfill_slots(self._config.batch_size)
                        self._backfilled = found == 0
                    next_rebalance = self._clock.monotonic() + self._leases.renew_interval_s
                    self._metrics.shards_held = len(self._leases.valid_shards())
                    self._metrics.leases_lost_total = self._leases.lost_total
                handled, pause = await self.step()
                self._db_backoff.reset()
            except DatabaseUnavailable:
                pause = self._db_backoff.next_delay()
                log.warning("outbox unreachable; retrying", extra={"retry_in_s": round(pause, 2)})
                handled = 0
            if handled:
                # More may be waiting: look again at once (after a failure's pause).
                idle_s = IDLE_POLL_MIN_S
                await _wait(stop, pause)
            else:
                # Idle: back off from 10 ms to RELAY_POLL_INTERVAL_S (the latency bound).
                await _wait(stop, max(pause, idle_s))
                idle_s = min(idle_s * 2, self._config.poll_interval_s)

    async def step(self) -> tuple[int, float]:
        """One batch. Returns (events handled, seconds to pause before the next batch)."""
        shards = self._leases.valid_shards()
        if not shards:
            return 0, 0.0
        events = await self._store.due(
            slot_ranges(shards, self._config.shards), self._clock.wall(), self._config.batch_size
        )
        if not events:
            return 0, 0.0
        confirmed = await self._leases.confirm(self._shard(e) for e in events)
        events = [e for e in events if self._shard(e) in confirmed]
        if not events:
            return 0, 0.0

        messages: list[Message] = []
        publishable: list[PendingEvent] = []
        for event in events:
            try:
                messages.append(build_message(event))
                publishable.append(event)
            except EnvelopeError as exc:
                await self._fail(event, str(exc))
        try:
            deliveries = await self._publisher.publish(messages) if messages else []
        except PublisherUnavailable as exc:
            log.warning("kafka unavailable: %s", exc)
            deliveries = [Delivery(Outcome.RETRY, str(exc))] * len(messages)

        now = self._clock.wall()
        sent = [e.event_id for e, d in zip(publishable, deliveries, strict=True) if _ok(d)]
        retry = [
            e.event_id
            for e, d in zip(publishable, deliveries, strict=True)
            if d.outcome is Outcome.RETRY
        ]
        if sent:
            await self._store.mark_sent(sent, now)
            self._metrics.published_total += len(sent)
        for event, delivery in zip(publishable, deliveries, strict=True):
            if delivery.outcome is Outcome.REJECTED:
                await self._fail(event, delivery.reason)
        pause = 0.0
        if retry:
            pause = self._backoff.next_delay()
            self._metrics.retries_total += len(retry)
            self._metrics.publish_errors_total += 1
            await self._store.reschedule(retry, now + timedelta(seconds=pause), now)
            log.warning(
                "publish failed; events stay new",
                extra={"events": len(retry), "retry_in_s": round(pause, 2)},
            )
        else:
            self._backoff.reset()
        return len(events), pause

    async def sweep(self) -> None:
        """Delete `sent` events older than the retention, in bounded batches."""
        cutoff = self._clock.wall() - timedelta(seconds=self._config.sent_retention_s)
        while True:
            deleted = await self._store.sweep_sent(cutoff, self._config.sweep_batch)
            self._metrics.swept_total += deleted
            if deleted < self._config.sweep_batch:
                return

    async def _fail(self, event: PendingEvent, reason: str) -> None:
        log.error("event failed for good", extra={"event_id": event.event_id, "reason": reason})
        await self._store.mark_failed(event.event_id, reason[:500], self._clock.wall())
        self._metrics.failures_total += 1

    def _shard(self, event: PendingEvent) -> int:
        slot = relay_slot(event.event_id) if event.slot is None else event.slot
        return shard_of_slot(slot, self._config.shards)

    async def _renew(self) -> None:
        await self._leases.renew()
        self._metrics.shards_held = len(self._leases.valid_shards())
        self._metrics.leases_lost_total = self._leases.lost_total

    async def _measure_lag(self) -> None:
        oldest = await self._store.oldest_unsent_created_at()
        age = 0.0 if oldest is None else (self._clock.wall() - oldest).total_seconds()
        self._metrics.oldest_unsent_age_s = round(max(age, 0.0), 3)

    async def _every(
        self, interval_s: float, stop: asyncio.Event, job: Callable[[], Awaitable[None]]
    ) -> None:
        while not stop.is_set():
            try:
                await job()
            except DatabaseUnavailable:
                log.warning("outbox unreachable in %s", getattr(job, "__name__", "job"))
            except Exception:  # a helper must not die: the loop relies on renewals
                log.exception("relay helper failed")
            await _wait(stop, interval_s)


def _ok(delivery: Delivery) -> bool:
    return delivery.outcome is Outcome.DELIVERED


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
