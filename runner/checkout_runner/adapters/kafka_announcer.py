"""ResultAnnouncer on Kafka through aiokafka: one record of the status topic per result
written (checkout_common.status_message, `checkout.result.written`).

An announcement is a shortcut, never the only way: a result not announced (Kafka down, or
slower than the timeout) is found by the servers' own checks, later. So a failure is logged
and counted, the producer is rebuilt for the next one, and processing goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from checkout_common import status_message

from ..domain import VideoEvent

log = logging.getLogger(__name__)


class KafkaResultAnnouncer:
    """Implements ports.ResultAnnouncer on one topic."""

    def __init__(
        self,
        producer_factory: Callable[[], AIOKafkaProducer],
        *,
        topic: str,
        timeout_s: float,
    ) -> None:
        self._producer_factory = producer_factory
        self._topic = topic
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self.failed = 0  # announcements given up (for tests and metrics)

    async def announce(self, event: VideoEvent, key: str) -> None:
        value = status_message.result_written(
            event_id=event.event_id,
            video_id=event.video_id,
            bucket=event.bucket,
            result_key=key,
            written_at=datetime.now(UTC),
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._producer is None:
                    producer = self._producer_factory()
                    self._producer = producer
                    await producer.start()
                await self._producer.send_and_wait(
                    self._topic, value=value, key=event.event_id.encode()
                )
        except (TimeoutError, KafkaError, OSError) as exc:
            self.failed += 1
            log.warning(
                "result not announced; the servers find it later",
                extra={"event_id": event.event_id, "error": repr(exc)},
            )
            await self.close()

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), self._timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("status producer stop failed: %r", exc)
