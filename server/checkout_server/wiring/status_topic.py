"""The status topic's ends, as the server and the relay wire them (docs/status.md, Watching):
the announcer every writer of statuses has, and the feed each server reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..adapters.kafka_status import KafkaStatusChannel, KafkaStatusFeed
from ..config import KafkaSection
from ..domain import OutboxEvent
from ..outbox.announcement import Announcer
from .clients import status_consumer, status_publisher


@dataclass
class Announcing:
    """An announcer and the channel it writes to (None without STATUS_TOPIC)."""

    announcer: Announcer
    channel: KafkaStatusChannel | None
    flush_timeout_s: float = 5.0  # STATUS_SEND_TIMEOUT_S

    async def close(self) -> None:
        """Once the writer has stopped: what is still queued is sent (or the servers are
        woken for it), then the channel closes."""
        await self.announcer.flush(self.flush_timeout_s)
        if self.channel is not None:
            await self.channel.close()


def announcing(
    settings: KafkaSection,
    *,
    client_id: str,
    on_lost: Callable[[], None] | None,
    secret: str,
) -> Announcing:
    """Changes go to STATUS_TOPIC, signed with `secret` (WAKE_SECRET) when given; those it
    does not take, or all without one, to `on_lost` (wake-ups, so the servers read the
    database)."""
    if not settings.status_topic:
        return Announcing(Announcer(None, on_lost=on_lost), None)
    channel = KafkaStatusChannel(status_publisher(settings, client_id=client_id), secret=secret)
    return Announcing(
        Announcer(channel, on_lost=on_lost), channel, flush_timeout_s=settings.status_send_timeout_s
    )


def status_feed(
    settings: KafkaSection,
    *,
    client_id: str,
    on_change: Callable[[OutboxEvent], None],
    on_result: Callable[[str], None],
    on_live: Callable[[bool], None],
    channel: KafkaStatusChannel | None,
    secret: str,
) -> KafkaStatusFeed | None:
    """The reader of STATUS_TOPIC (None without one: watchers poll the database); it has
    `channel` create the topic first, and takes status changes signed with `secret`
    (WAKE_SECRET) only, when given."""
    if not settings.status_topic:
        return None
    return KafkaStatusFeed(
        consumer_factory=lambda: status_consumer(settings, client_id=client_id),
        topic=settings.status_topic,
        on_change=on_change,
        on_result=on_result,
        on_live=on_live,
        before_start=channel.start if channel is not None else None,
        secret=secret,
    )
