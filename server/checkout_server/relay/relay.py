"""The publishing loop: due events of the shards held -> Kafka -> `sent`, and the sweeper.

One loop per relay, one batch at a time (bounded by RELAY_BATCH_SIZE): fetch the due `new`
events of the held shards, confirm the leases, publish, then mark the outcome. An event is
marked `sent` only after Kafka acknowledged it; a crash between the two republishes the batch
(at least once; consumers deduplicate by event id).

Idle, the loop waits for a wake-up (`wake()`: the server announces each new outbox message)
and otherwise looks again only at the next lease rebalance or after RELAY_POLL_INTERVAL_S (the
safety net for lost wake-ups and for writers that send none). A wake-up only ends an idle
wait: it never shortens a failure's backoff pause, and one that arrives during a round makes
the loop look again right after it, so none is lost. A wake-up publishes nothing by itself:
every batch still goes through the held, confirmed leases.

Each event is published in a PRODUCER span `publish` whose parent is the trace context stored
with it (the upload's span), so an upload and its publishing are one trace; the message's
`traceparent` header carries the publish span's context on to consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from opentelemetry import trace

from checkout_common.backoff import Backoff

from ..domain import EventStatus, OutboxEvent, age_s, input_object_key
from ..errors import (
    DatabaseTimeout,
    DatabaseUnavailable,
    EnvelopeError,
    PublisherUnavailable,
    ServiceError,
)
from ..outbox.document import BUCKET
from ..outbox.sharding import relay_slot, shard_of_slot, slot_ranges
from ..supervisor import Supervisor
from ..tracing import context_from_traceparent, traceparent_of
from .envelope import build_message
from .leases import Clock, LeaseManager
from .metrics import RelayMetrics
from .ports import (
    Message,
    OutboxRelayStore,
    PendingEvent,
    Publisher,
    PublishOutcome,
    PublishResult,
)

log = logging.getLogger(__name__)

IDLE_POLL_MIN_S = 0.01
# The lag query reads the whole outbox on FerretDB: a gauge for dashboards needs no more.
LAG_INTERVAL_S = 15.0
# Only the relay holding this shard measures the lag: one query for the whole deployment,
# whatever the number of relays and servers.
LAG_SHARD = 0
# Tries of marking a published batch before its round is given up (and the batch published
# again by the next one).
MARK_ATTEMPTS = 4


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    shards: int
    batch_size: int = 500
    poll_interval_s: float = 2.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    sent_retention_s: float = 0.0  # 0: the store deletes sent messages as it marks them
    sweep_interval_s: float = 5.0
    sweep_batch: int = 1_000
    # The least time between the starts of two rounds that wake-ups cause.
    wake_min_gap_s: float = 0.0


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
        supervisor: Supervisor,
        tracer: trace.Tracer | None = None,
        topic: str = "",
        announce: Callable[[OutboxEvent], None] | None = None,
        settled: Callable[[], None] | None = None,
    ) -> None:
        """`tracer` makes the publish spans (default: none are recorded); `topic` names the
        destination in them; `announce` gets each event as marked `sent` or `failed` (for the
        status topic: outbox/announcement.py), and `settled` is called once the `sent` it
        announced before marking is marked; neither may block nor raise."""
        self._announce = announce
        self._settled = settled
        self._tracer = tracer or trace.NoOpTracer()
        self._topic = topic
        self._store = store
        self._leases = leases
        self._publisher = publisher
        self._metrics = metrics
        self._config = config
        self._clock = clock
        self._supervisor = supervisor
        self._publish_backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._publish_failures = 0  # batches in a row that failed transiently
        self._idle_s = IDLE_POLL_MIN_S
        self._next_rebalance = 0.0
        self._woken = asyncio.Event()  # a wake-up came since the current round began
        self._round_started = 0.0  # monotonic
        self._idle_wait = False  # the last round's wait may be cut short by a wake-up
        # Wake-ups arrive (the wiring listens for them): idle, wait for one instead of
        # polling faster after activity.
        self.push = False
        # Messages without a slot come only from before slots existed (the seed service's
        # outbox): backfill them at start-up until none is left, then never query again.
        self._backfilled = False

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; then finish the batch in flight, flush the producer
        and release the leases. A failing round (the outbox or Kafka unreachable, or a bug)
        is logged and retried with backoff: this returns only once `stop` is set."""
        supervisor = self._supervisor
        helpers = [
            supervisor.spawn("relay-renew", self._renew),
            supervisor.spawn("relay-lag", self._measure_lag),
        ]
        if self._config.sent_retention_s > 0:
            helpers.append(supervisor.spawn("relay-sweep", self._sweep_round))

        async def loop_round() -> float:
            self._woken.clear()  # from here on, a wake-up means: look again
            self._round_started = self._clock.monotonic()
            wait = await self.round()
            if wait > 0:
                await self._wait(stop, wait, wakeable=self._idle_wait)
            return 0.0

        try:
            await supervisor.run("relay-loop", loop_round, stop)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._publisher.close()
            try:
                await self._leases.release_all()
            except ServiceError as exc:
                log.warning("could not release leases; they expire on their own: %s", exc.text)
            self._metrics.shards_held = 0
            self._metrics.oldest_unsent_age_s = None
            log.info("relay stopped")

    async def round(self) -> float:
        """One round of the publishing loop: rebalance when due, then one batch. Returns the
        seconds to wait before the next round: none after a full batch, else a poll delay
        that grows from 10 ms to RELAY_POLL_INTERVAL_S while idle (the latency bound)."""
        if self._clock.monotonic() >= self._next_rebalance:
            await self._leases.rebalance()
            if not self._backfilled:
                found = await self._store.backfill_slots(self._config.batch_size)
                self._backfilled = found == 0
            self._next_rebalance = self._clock.monotonic() + self._leases.renew_interval_s
            self._metrics.shards_held = len(self._leases.valid_shards())
            self._metrics.leases_lost_total = self._leases.lost_total
        handled, pause = await self.step()
        if handled:
            # More may be waiting: look again at once (after a failure's pause).
            self._idle_s = IDLE_POLL_MIN_S
            self._idle_wait = False
            return pause
        self._idle_wait = True
        if self.push:
            # Wake-ups bring new events; look again anyway at the next rebalance (shards may
            # come free) and at the safety-net interval.
            until_rebalance = self._next_rebalance - self._clock.monotonic()
            return max(IDLE_POLL_MIN_S, min(self._config.poll_interval_s, until_rebalance))
        wait = max(pause, self._idle_s)
        self._idle_s = min(self._idle_s * 2, self._config.poll_interval_s)
        return wait

    def wake(self) -> None:
        """New events may be due: end an idle wait now (never a failure's pause). Safe to
        call any number of times, from the event loop's thread."""
        self._woken.set()

    async def _wait(self, stop: asyncio.Event, seconds: float, *, wakeable: bool) -> None:
        """Wait `seconds`, or less if `stop` is set or, when `wakeable`, a wake-up comes (also
        one that came during the round just finished)."""
        events = [stop, self._woken] if wakeable else [stop]
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if wakeable and self._woken.is_set() and not stop.is_set():
            # Woken: no sooner than the minimum gap after this round began, however many
            # wake-ups come (a flood costs one look per gap, not one per datagram).
            since = self._clock.monotonic() - self._round_started
            gap = min(self._config.wake_min_gap_s, seconds) - since
            if gap > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), gap)

    async def step(self) -> tuple[int, float]:
        """One batch: the due events of the shards still held are published, then marked.
        Returns (events handled, seconds to pause before the next batch)."""
        events = await self._claim()
        if not events:
            return 0, 0.0
        publishable, deliveries = await self._publish(events)
        return len(events), await self._record(publishable, deliveries)

    async def _claim(self) -> list[PendingEvent]:
        """The due events of the held shards whose lease is confirmed right now (fencing:
        a shard another relay took over is dropped before anything of it is published)."""
        shards = self._leases.valid_shards()
        if not shards:
            return []
        events = await self._store.due(
            slot_ranges(shards, self._config.shards), self._clock.wall(), self._config.batch_size
        )
        if not events:
            return []
        confirmed = await self._leases.confirm(self._shard(e) for e in events)
        return [e for e in events if self._shard(e) in confirmed]

    async def _publish(
        self, events: list[PendingEvent]
    ) -> tuple[list[PendingEvent], list[PublishResult]]:
        """Publish the events that make a message (the others fail for good at once); one
        PublishResult per published event. Kafka being unreachable is a RETRY of all of them."""
        messages: list[Message] = []
        publishable: list[PendingEvent] = []
        spans: list[trace.Span] = []
        for event in events:
            span = self._publish_span(event)
            try:
                messages.append(build_message(event, traceparent_of(span)))
            except EnvelopeError as exc:
                _end_span(span, PublishOutcome.REJECTED, str(exc))
                await self._fail(event, str(exc))
                continue
            publishable.append(event)
            spans.append(span)
        try:
            deliveries = await self._publisher.publish(messages) if messages else []
        except PublisherUnavailable as exc:
            log.warning("kafka unavailable: %s", exc.detail or exc.text)
            deliveries = [PublishResult(PublishOutcome.RETRY, exc.detail or exc.text)] * len(
                messages
            )
        except BaseException as exc:
            for span in spans:
                _end_span(span, PublishOutcome.RETRY, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._metrics.producer_restarts_total = self._publisher.restarts
        for span, delivery in zip(spans, deliveries, strict=True):
            _end_span(span, delivery.outcome, delivery.reason)
        return publishable, deliveries

    def _publish_span(self, event: PendingEvent) -> trace.Span:
        """The event's `publish` span, a child of the context stored with it (a new trace
        without one); ended by `_end_span` once the outcome is known."""
        return self._tracer.start_span(
            "publish",
            context=context_from_traceparent(event.traceparent),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": self._topic,
                "messaging.message.id": event.event_id,
                "messaging.kafka.message.key": event.event_id,
                "checkout.attempt": event.attempts + 1,
            },
        )

    async def _record(self, events: list[PendingEvent], deliveries: list[PublishResult]) -> float:
        """Mark each event by its outcome: `sent`, `failed`, or due again after a backoff
        (the seconds returned, 0 when nothing is to be retried)."""
        now = self._clock.wall()
        outcomes = list(zip(events, deliveries, strict=True))
        sent = [e.event_id for e, d in outcomes if d.outcome is PublishOutcome.DELIVERED]
        retry = [e.event_id for e, d in outcomes if d.outcome is PublishOutcome.RETRY]
        if sent:
            # Sent is what Kafka acknowledged: announced now, while the records are marked
            # (on FerretDB that mark costs time in proportion to the collection). A watcher
            # that reads a record still `new` meanwhile starts from what its server heard.
            for event, delivery in outcomes:
                if delivery.outcome is PublishOutcome.DELIVERED:
                    self._announced(event, EventStatus.SENT, now)
            await self._mark_sent(sent, now)
            if self._settled is not None:
                self._settled()
            self._metrics.published_total += len(sent)
        for event, delivery in outcomes:
            if delivery.outcome is PublishOutcome.REJECTED:
                await self._fail(event, delivery.reason)
        if not retry:
            self._publish_failures = 0
            return 0.0
        self._publish_failures += 1
        pause = self._publish_backoff.delay_s(self._publish_failures)
        self._metrics.retries_total += len(retry)
        self._metrics.publish_errors_total += 1
        await self._store.reschedule(retry, now + timedelta(seconds=pause), now)
        log.warning(
            "publish failed; events stay new",
            extra={"events": len(retry), "retry_in_s": round(pause, 2)},
        )
        return pause

    async def _mark_sent(self, sent: list[str], now: datetime) -> None:
        """`mark_sent`, tried again (MARK_ATTEMPTS in all, with the publish backoff) while the
        database is unavailable or slow: the batch is in Kafka already, and a round given up
        here publishes every one of its events again. Seen after a Kafka outage, when the
        backlog's marks outlasted the socket timeout (the soak's kafka-down: up to 1343
        duplicates of 2076 events)."""
        backoff = Backoff(self._config.backoff_initial_s, self._config.backoff_max_s)
        for attempt in range(1, MARK_ATTEMPTS + 1):
            try:
                await self._store.mark_sent(sent, now)
                return
            except (DatabaseUnavailable, DatabaseTimeout) as exc:
                if attempt == MARK_ATTEMPTS:
                    raise
                delay = backoff.delay_s(attempt)
                log.warning(
                    "marking a published batch failed; trying again",
                    extra={"events": len(sent), "retry_in_s": round(delay, 2), "error": exc.text},
                )
                await asyncio.sleep(delay)

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
        now = self._clock.wall()
        await self._store.mark_failed(event.event_id, reason[:500], now)
        self._metrics.failures_total += 1
        self._announced(event, EventStatus.FAILED, now, error=reason[:500])

    def _announced(
        self, event: PendingEvent, status: EventStatus, now: datetime, *, error: str = ""
    ) -> None:
        if self._announce is None:
            return
        # What a status change carries (outbox/announcement.py): the payload's bucket, read
        # as it is (an event fails here because its payload is malformed).
        self._announce(
            OutboxEvent(
                event_id=event.event_id,
                video_id=event.video_id,
                bucket=str(event.payload.get(BUCKET) or ""),
                object_key=input_object_key(event.video_id),
                filename="",
                content_type="",
                size_bytes=0,
                sha256="",
                status=status,
                created_at=event.created_at,
                updated_at=now,
                error=error,
                owner=event.owner,
            )
        )

    def _shard(self, event: PendingEvent) -> int:
        slot = relay_slot(event.event_id) if event.slot is None else event.slot
        return shard_of_slot(slot, self._config.shards)

    async def _sweep_round(self) -> float:
        await self.sweep()
        return self._config.sweep_interval_s

    async def _renew(self) -> float:
        await self._leases.renew()
        self._metrics.shards_held = len(self._leases.valid_shards())
        self._metrics.leases_lost_total = self._leases.lost_total
        return self._leases.renew_interval_s

    async def _measure_lag(self) -> float:
        """The age of the oldest unsent event, measured by the holder of LAG_SHARD alone
        (the others report none, rather than a copy or a stale value)."""
        if LAG_SHARD not in self._leases.valid_shards():
            self._metrics.oldest_unsent_age_s = None
            # No query: look again as soon as the shard may have come to this relay.
            return min(LAG_INTERVAL_S, self._leases.renew_interval_s)
        oldest = await self._store.oldest_unsent_created_at()
        self._metrics.oldest_unsent_age_s = age_s(oldest, self._clock.wall())
        return LAG_INTERVAL_S


def _end_span(span: trace.Span, outcome: PublishOutcome, reason: str) -> None:
    span.set_attribute("checkout.outcome", outcome.value)
    if outcome is not PublishOutcome.DELIVERED:
        span.set_status(trace.StatusCode.ERROR, reason or outcome.value)
    span.end()
