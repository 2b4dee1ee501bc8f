"""The outbox relay against real FerretDB and Kafka: events become `sent` only once Kafka
has them, with the agreed key, envelope and headers; several relays never publish the same
event; a killed relay's events are published after a restart.

Relays run as real processes (`python -m checkout_server.wiring.relay`), so they can be killed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from checkout_server.config import ServerSettings
from checkout_server.domain import OutboxEvent
from checkout_server.outbox.document import Document, to_document
from devstack import Kafka, free_port
from devstack._stack import PythonService
from tests.helpers import off_the_event_loop, outbox_event
from tests.integration.storage_checks import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def new_event(bucket: str = "videos") -> OutboxEvent:
    """A `new` event of a video stored just now, as the server makes it."""
    return outbox_event(
        str(uuid.uuid4()), bucket=bucket, filename="clip.mp4", size_bytes=4321, sha256="ab" * 32
    )


def new_document(bucket: str = "videos") -> Document:
    """The outbox message of `new_event`."""
    return to_document(new_event(bucket))


@pytest.fixture
def topic() -> str:
    return f"relay-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def outbox(settings: ServerSettings) -> AsyncIterator[AsyncCollection[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    yield client[settings.mongo_db][settings.mongo_outbox_collection]
    await client.close()


class Relays:
    """Relay processes of one test, stopped at its end."""

    def __init__(self, settings: ServerSettings, kafka: Kafka, topic: str, log_dir: Path) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topic = topic
        self.log_dir = log_dir
        self.started: list[PythonService] = []

    def start(self, name: str, **env: str) -> PythonService:
        """Start a relay and wait until it is ready (blocking: off the event loop only)."""
        off_the_event_loop("Relays.start")
        port = free_port()
        relay = PythonService(
            name=name,
            module="checkout_server.wiring.relay",
            port=port,
            env={
                "MONGO_URI": self.settings.mongo_uri,
                "MONGO_DB": self.settings.mongo_db,
                "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
                "KAFKA_TOPIC": self.topic,
                # Where the test's server reads statuses (none by default: wake-ups instead).
                "STATUS_TOPIC": self.settings.status_topic,
                "RELAY_ID": name,
                "RELAY_HEALTH_ADDR": f"127.0.0.1:{port}",
                "RELAY_METRICS_ADDR": "",
                "RELAY_LEASE_TTL_S": "6",
                "RELAY_CLOCK_SKEW_S": "1",
                "RELAY_BACKOFF_MAX_S": "2",
                # The tests read the `sent` outbox messages: keep them for the whole test.
                "RELAY_SENT_RETENTION_S": "3600",
                "LOG_FORMAT": "json",
                **env,
            },
            log_path=self.log_dir / f"{name}.log",
        )
        relay.start(timeout_s=60)
        self.started.append(relay)
        return relay

    def stop_all(self) -> None:
        for relay in self.started:
            relay.stop()


@pytest.fixture
def relays(settings: ServerSettings, kafka: Kafka, topic: str, tmp_path: Path) -> Iterator[Relays]:
    group = Relays(settings, kafka, topic, tmp_path)
    yield group
    group.stop_all()


async def consume(kafka: Kafka, topic: str, expected: int, timeout_s: float = 120) -> list[Any]:
    """Read the topic from the start until `expected` distinct keys were seen."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len({r.key for r in records}) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for part in batch.values():
                    records.extend(part)
    finally:
        await consumer.stop()
    return records


async def count_sent(outbox: AsyncCollection[Document]) -> int:
    return await outbox.count_documents({"status": "sent"})


async def test_events_are_published_with_key_envelope_and_headers(
    outbox: AsyncCollection[Document], relays: Relays, kafka: Kafka, topic: str
) -> None:
    documents = [new_document() for _ in range(20)]
    await outbox.insert_many(documents)
    await asyncio.to_thread(relays.start, "relay-a")

    await wait_until(lambda: _all_sent(outbox, 20), timeout_s=120, what="all events sent")
    records = await consume(kafka, topic, expected=20)

    by_id = {d["_id"]: d for d in documents}
    assert {r.key.decode() for r in records} == set(by_id)
    for record in records:
        event_id = record.key.decode()
        headers = dict(record.headers)
        assert headers["event_id"] == record.key
        assert headers["event_type"] == b"checkout.video.uploaded"
        envelope = json.loads(record.value)
        payload = by_id[event_id]["payload"]
        assert envelope == {
            "version": 1,
            "event_id": event_id,
            "type": "checkout.video.uploaded",
            "video_id": event_id,
            "bucket": payload["bucket"],
            "object_key": payload["object_key"],
            "size_bytes": payload["size_bytes"],
            "sha256": payload["sha256"],
            "created_at": envelope["created_at"],
        }
    stored = await outbox.find({}).to_list()
    for document in stored:
        assert document["status"] == "sent"
        assert document["sent_at"] >= document["created_at"]
        assert document["updated_at"] == document["sent_at"]
        assert "ready_at" not in document or document["ready_at"] is None


async def test_three_relays_publish_each_event_once(
    outbox: AsyncCollection[Document], relays: Relays, kafka: Kafka, topic: str
) -> None:
    total = 600
    # Zero duplicates holds only while no lease lapses: leases long enough that a relay
    # starved of CPU for a while on a loaded machine still renews them (nothing here waits
    # for one to run out).
    env = {"RELAY_LEASE_TTL_S": "30", "RELAY_CLOCK_SKEW_S": "2"}
    await asyncio.gather(*(asyncio.to_thread(relays.start, f"relay-{n}", **env) for n in "abc"))
    documents = [new_document() for _ in range(total)]
    for start in range(0, total, 200):
        await outbox.insert_many(documents[start : start + 200])

    await wait_until(lambda: _all_sent(outbox, total), timeout_s=200, what="all events sent")
    records = await consume(kafka, topic, expected=total)
    counts = Counter(r.key for r in records)
    assert len(counts) == total
    assert [k for k, n in counts.items() if n > 1] == []


async def test_killed_relay_events_published_after_restart(
    outbox: AsyncCollection[Document], relays: Relays, kafka: Kafka, topic: str
) -> None:
    total = 1000
    documents = [new_document() for _ in range(total)]
    await outbox.insert_many(documents)
    relay = await asyncio.to_thread(relays.start, "relay-k", RELAY_BATCH_SIZE="100")
    await wait_until(lambda: _some_sent(outbox, 100), timeout_s=120, what="a first batch sent")
    await asyncio.to_thread(relay.kill)
    sent_at_kill = await count_sent(outbox)
    assert sent_at_kill < total, "the burst finished before the kill: make it larger"

    # The restarted relay (same name: its own old leases) takes the shards when they expire.
    await asyncio.to_thread(relays.start, "relay-k2", RELAY_BATCH_SIZE="100")
    await wait_until(lambda: _all_sent(outbox, total), timeout_s=200, what="all events sent")
    records = await consume(kafka, topic, expected=total)
    counts = Counter(r.key for r in records)
    assert len(counts) == total
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 100  # only the batch in flight at the kill


async def _all_sent(outbox: AsyncCollection[Document], total: int) -> bool:
    return await count_sent(outbox) == total


async def _some_sent(outbox: AsyncCollection[Document], at_least: int) -> bool:
    return await count_sent(outbox) >= at_least
