"""The status topic on Kafka through aiokafka (checkout_common.status_message): written through
a KafkaPublisher, read by every server from its end with no consumer group.

Each server reads every partition from where it joined: what was announced before it started
is in the database, which a new watcher reads first. The feed counts as live while each
partition was fetched from within `LIVE_WITHIN_S` (a fetch returns at least every
`fetch_max_wait_ms`, with records or without); otherwise the watchers fall back to polling
the database until it is live again, so an outage of Kafka costs latency, never a change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from checkout_common import status_message

from ..domain import OutboxEvent
from ..errors import PublisherUnavailable
from ..outbox.announcement import event_of
from ..relay.ports import Message, PublishOutcome
from .kafka_publisher import KafkaPublisher

log = logging.getLogger(__name__)

# The feed is live while every partition was fetched from this recently.
LIVE_WITHIN_S = 3.0
# Refused records are warned of at most this often, each warning with how many since.
REFUSED_LOG_EVERY_S = 60.0
# Records taken per read.
_MAX_RECORDS = 1000

ConsumerFactory = Callable[[], AIOKafkaConsumer]


class KafkaStatusChannel:
    """Implements ports.StatusChannel: writes records through `publisher` (its topic), each
    signed with `secret` when there is one."""

    def __init__(self, publisher: KafkaPublisher, *, secret: str = "") -> None:
        self._publisher = publisher
        self._secret = secret

    async def start(self) -> None:
        """Create the topic if missing and connect; PublisherUnavailable if Kafka is not
        reachable."""
        await self._publisher.start()

    async def send(self, records: Sequence[tuple[str, bytes]]) -> bool:
        messages = [
            Message(key=key.encode(), value=value, headers=self._headers(value))
            for key, value in records
        ]
        try:
            results = await self._publisher.publish(messages)
        except PublisherUnavailable as exc:
            log.warning("status topic unavailable: %s", exc.detail or exc.text)
            return False
        return all(r.outcome is PublishOutcome.DELIVERED for r in results)

    def _headers(self, value: bytes) -> list[tuple[str, bytes]]:
        if not self._secret:
            return []
        return [(status_message.SIGNATURE, status_message.signature(self._secret, value))]

    async def close(self) -> None:
        await self._publisher.close()


class KafkaStatusFeed:
    """Reads the status topic from its end and hands each record on: a status change to
    `on_change` (with `secret`, only one it signed), a result the runner wrote to `on_result`
    (the event id: a hint, checked in storage, so unsigned); `on_live` hears whether the feed
    is live, each time that changes. None of them may block or raise."""

    def __init__(
        self,
        *,
        consumer_factory: ConsumerFactory,
        topic: str,
        on_change: Callable[[OutboxEvent], None],
        on_result: Callable[[str], None],
        on_live: Callable[[bool], None],
        before_start: Callable[[], Awaitable[None]] | None = None,
        secret: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`before_start` runs before each start of the consumer (the topic's creation);
        `clock` spaces the warnings of refused records."""
        self._before_start = before_start
        self._clock = clock
        self._refusal_logged_at: float | None = None
        self._refused_unlogged = 0
        self._secret = secret
        self._consumer_factory = consumer_factory
        self._topic = topic
        self._on_change = on_change
        self._on_result = on_result
        self._on_live = on_live
        self._consumer: AIOKafkaConsumer | None = None
        self._live = False
        self.skipped = 0  # records of a kind or version this server does not know
        self.refused = 0  # status changes without a valid signature

    @property
    def live(self) -> bool:
        return self._live

    async def round(self) -> float:
        """Read once (starting the consumer first if need be), and say whether live."""
        consumer = self._consumer
        if consumer is None:
            if self._before_start is not None:
                await self._before_start()
            consumer = self._consumer = self._consumer_factory()
            try:
                await consumer.start()
                consumer.subscribe([self._topic])
            except (KafkaError, OSError) as exc:
                self._consumer = None
                await _stop(consumer)
                self._set_live(False)
                raise PublisherUnavailable(f"cannot read the status topic: {exc!r}") from exc
        try:
            batches = await consumer.getmany(timeout_ms=500, max_records=_MAX_RECORDS)
        except KafkaError as exc:
            self._set_live(False)
            raise PublisherUnavailable(f"cannot read the status topic: {exc!r}") from exc
        for records in batches.values():
            for record in records:
                self.handle(record.value, dict(record.headers or ()))
        self._set_live(self._fetched_recently(consumer))
        return 0.0

    def handle(self, value: bytes | None, headers: Mapping[str, bytes] | None = None) -> None:
        """Hand on one record (its value and headers), or count it skipped or refused."""
        fields = status_message.decode(value)
        if fields is None:
            self.skipped += 1
            return
        if fields["type"] == status_message.RESULT_WRITTEN:
            self._on_result(fields["event_id"])
            return
        assert value is not None
        signature = (headers or {}).get(status_message.SIGNATURE)
        if self._secret and not status_message.signed(self._secret, value, signature):
            self._refuse(fields["event_id"])
            return
        event = event_of(fields)
        if event is None:
            self.skipped += 1
            return
        self._on_change(event)

    def _refuse(self, event_id: str) -> None:
        """Count a record refused, and warn of the first and then at most once every
        REFUSED_LOG_EVERY_S with how many were refused since: whoever may write the topic
        (the runner's Kafka user) could otherwise flood every server's log."""
        self.refused += 1
        self._refused_unlogged += 1
        now = self._clock()
        logged = self._refusal_logged_at
        if logged is not None and now - logged < REFUSED_LOG_EVERY_S:
            return
        log.warning(
            "unsigned status changes refused",
            extra={"refused": self._refused_unlogged, "last_event_id": event_id},
        )
        self._refusal_logged_at, self._refused_unlogged = now, 0

    def _fetched_recently(self, consumer: AIOKafkaConsumer) -> bool:
        partitions = consumer.assignment()
        if not partitions:
            return False
        now_ms = time.time() * 1000
        for partition in partitions:
            try:
                last = consumer.last_poll_timestamp(partition)
            except (AssertionError, KafkaError):  # not yet positioned
                return False
            if last is None or now_ms - last > LIVE_WITHIN_S * 1000:
                return False
        return True

    def _set_live(self, live: bool) -> None:
        if live != self._live:
            self._live = live
            log.info("status topic %s", "live" if live else "not live: watchers poll")
            self._on_live(live)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._set_live(False)
        if consumer is not None:
            await _stop(consumer)


async def _stop(consumer: AIOKafkaConsumer) -> None:
    try:
        await asyncio.wait_for(consumer.stop(), 10)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("status consumer stop failed: %r", exc)
