"""Publisher on Kafka through aiokafka: idempotent producer, acks from all in-sync replicas.

aiokafka's idempotent producer never gives up on a send by itself, and after some errors
(OutOfOrderSequenceNumber, a fenced or unknown producer id: aiokafka issues #1017, #1101) its
sender task is dead while `send` still accepts records. So every send, flush and stop here
runs under our own timeout, and after a timeout or a fatal error the producer is discarded
and a new one is built by the factory on the next batch (records it had may be written
twice: delivery is at least once). Vendor errors end here: callers see PublishResult outcomes
and PublisherUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
)

from ..errors import PublisherUnavailable
from ..relay.ports import Message, PublishOutcome, PublishResult

log = logging.getLogger(__name__)

ProducerFactory = Callable[[], AIOKafkaProducer]
AdminFactory = Callable[[], AIOKafkaAdminClient]

# Errors that say this record can never be written: the event is marked failed.
_PERMANENT: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
)
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


class KafkaPublisher:
    """Implements relay.ports.Publisher for one topic."""

    def __init__(
        self,
        *,
        producer_factory: ProducerFactory,
        admin_factory: AdminFactory,
        topic: str,
        partitions: int,
        replication_factor: int,
        timeout_s: float,
        topic_configs: Mapping[str, str] | None = None,
    ) -> None:
        """`topic_configs`: the topic's configuration when this creates it."""
        self._producer_factory = producer_factory
        self._admin_factory = admin_factory
        self._topic = topic
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._timeout_s = timeout_s
        self._topic_configs = dict(topic_configs or {})
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._topic_ready = False
        self._restarts = 0

    @property
    def restarts(self) -> int:
        return self._restarts

    async def start(self) -> None:
        await self._ready_producer()

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        producer = await self._ready_producer()
        deliveries: list[PublishResult | None] = [None] * len(messages)
        pending: list[tuple[int, asyncio.Future[object]]] = []
        fatal: BaseException | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                for index, message in enumerate(messages):
                    try:
                        future = await producer.send(
                            self._topic,
                            value=message.value,
                            key=message.key,
                            headers=list(message.headers),
                        )
                    except KafkaError as exc:
                        deliveries[index] = _classify(exc)
                        if deliveries[index] is not None and _is_fatal(exc):
                            fatal = exc
                        continue
                    pending.append((index, future))
                results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        except TimeoutError:
            await self._discard(f"no acknowledgement within {self._timeout_s:.0f}s")
            raise PublisherUnavailable(
                f"Kafka did not acknowledge within {self._timeout_s:.0f}s"
            ) from None
        for (index, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                deliveries[index] = _classify(result)
                if _is_fatal(result):
                    fatal = result
            else:
                deliveries[index] = PublishResult(PublishOutcome.DELIVERED)
        if fatal is not None:
            await self._discard(f"fatal producer error: {fatal!r}")
        return [
            d if d is not None else PublishResult(PublishOutcome.RETRY, "not sent")
            for d in deliveries
        ]

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.flush(), self._timeout_s)
        except (TimeoutError, KafkaError) as exc:
            log.warning("producer flush failed on close: %r", exc)
        await self._stop(producer)

    async def _ready_producer(self) -> AIOKafkaProducer:
        # One at a time: two callers (the status topic's reader starts it while a batch is
        # sent) would each start a producer, and the one overwritten would never be stopped.
        async with self._starting:
            return await self._start_producer()

    async def _start_producer(self) -> AIOKafkaProducer:
        if not self._topic_ready:
            await self._ensure_topic()
        if self._producer is None:
            producer = self._producer_factory()
            try:
                await asyncio.wait_for(producer.start(), self._timeout_s)
            except (TimeoutError, KafkaError, OSError) as exc:
                await self._stop(producer)
                raise PublisherUnavailable(f"cannot start the Kafka producer: {exc!r}") from exc
            except asyncio.CancelledError:  # stopping meanwhile: nobody else has it to close
                await self._stop(producer)
                raise
            self._producer = producer
        return self._producer

    async def _ensure_topic(self) -> None:
        admin = self._admin_factory()
        try:
            async with asyncio.timeout(self._timeout_s):
                await admin.start()
                response = await admin.create_topics(
                    [
                        NewTopic(
                            self._topic,
                            self._partitions,
                            self._replication_factor,
                            topic_configs=self._topic_configs,
                        )
                    ]
                )
        except (TimeoutError, KafkaError, OSError) as exc:
            raise PublisherUnavailable(f"cannot create the topic: {exc!r}") from exc
        finally:
            try:
                await asyncio.wait_for(admin.close(), self._timeout_s)
            except (TimeoutError, KafkaError, OSError) as exc:
                log.warning("kafka admin close failed: %r", exc)
        for topic_error in response.topic_errors:
            code = topic_error[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise PublisherUnavailable(f"cannot create topic {self._topic}: {topic_error!r}")
            if code == 0:
                log.info(
                    "created topic",
                    extra={"topic": self._topic, "partitions": self._partitions},
                )
        self._topic_ready = True

    async def _discard(self, why: str) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self._restarts += 1
        log.warning("recreating the Kafka producer: %s", why)
        await self._stop(producer)

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), self._timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("producer stop failed; abandoning it: %r", exc)
            await self._force_close(producer)

    async def _force_close(self, producer: AIOKafkaProducer) -> None:
        """After a `stop` that timed out (it waits without bound for records the broker never
        takes) aiokafka counts the producer as closed, so `stop` cannot be called again, yet
        its sender task and connections live on, retrying forever. End them directly."""
        sender = getattr(producer, "_sender", None)  # aiokafka has no public force-close
        client = getattr(producer, "client", None)
        try:
            if sender is not None:
                await asyncio.wait_for(sender.close(), self._timeout_s)
            if client is not None:
                await asyncio.wait_for(client.close(), self._timeout_s)
        except Exception as exc:  # best effort: the producer is dropped either way
            log.warning("abandoned producer did not close: %r", exc)


def _classify(exc: BaseException) -> PublishResult:
    if isinstance(exc, _PERMANENT):
        return PublishResult(
            PublishOutcome.REJECTED, f"kafka rejected the message: {type(exc).__name__}"
        )
    return PublishResult(PublishOutcome.RETRY, f"{type(exc).__name__}: {exc}")


def _is_fatal(exc: BaseException) -> bool:
    """Errors after which the producer is not trusted again (not retriable by its class,
    e.g. OutOfOrderSequenceNumber, ProducerFenced, or an unexpected sender failure)."""
    if isinstance(exc, _PERMANENT):
        return False
    return not bool(getattr(exc, "retriable", False))
