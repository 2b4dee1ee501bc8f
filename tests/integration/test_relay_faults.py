"""The outbox relay under faults, against real FerretDB and Kafka (no mocks):

- Kafka stopped for ~30 s while uploads continue: uploads succeed, events wait as `new`
  (none `failed`), and all reach Kafka once it is back;
- a relay paused (SIGSTOP) past its lease: another takes over; when the paused one resumes
  it sees the newer epochs and stops; at most one duplicate per taken-over event;
- SIGTERM mid-burst: the relay exits 0 soon, what it published is `sent`, and its released
  leases let the next relay take over at once instead of after the lease TTL.

Relays run as real processes (`python -m checkout_server.wiring.relay`), so they can be signalled.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.outbox.document import Document, status_document
from devstack import Kafka, free_port
from devstack._stack import PythonService
from tests.helpers import mp4_bytes
from tests.integration.metrics_scrape import scrape
from tests.integration.processes import serving
from tests.integration.records import insert_records
from tests.integration.storage_checks import wait_until
from tests.integration.test_relay import Relays, new_document

pytestmark = pytest.mark.integration

SHARDS = 16  # the relay's default RELAY_SHARDS
# The tests' settings keep the default collection names.
STATUS_COLLECTION = ServerSettings.model_fields["mongo_status_collection"].default


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def topic() -> str:
    return f"relay-faults-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def database(settings: ServerSettings) -> AsyncIterator[AsyncDatabase[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    yield client[settings.mongo_db]
    await client.close()


@pytest.fixture
def outbox(
    database: AsyncDatabase[Document], settings: ServerSettings
) -> AsyncCollection[Document]:
    return database[settings.mongo_outbox_collection]


def relay_group(
    settings: ServerSettings, kafka: Kafka, topic: str, log_dir: Path
) -> Iterator[Relays]:
    group = Relays(settings, kafka, topic, log_dir)
    yield group
    group.stop_all()


@pytest.fixture
def relays(settings: ServerSettings, kafka: Kafka, topic: str, tmp_path: Path) -> Iterator[Relays]:
    yield from relay_group(settings, kafka, topic, tmp_path)


@pytest.fixture
def own_relays(
    settings: ServerSettings, own_kafka: Kafka, topic: str, tmp_path: Path
) -> Iterator[Relays]:
    yield from relay_group(settings, own_kafka, topic, tmp_path)


# --- helpers --------------------------------------------------------------------------------


async def start_relay(group: Relays, name: str, **env: str) -> tuple[PythonService, int]:
    """Start a relay process (ready when its health service answers) with a metrics port."""
    metrics_port = free_port()
    relay = await asyncio.to_thread(
        group.start, name, RELAY_METRICS_ADDR=f"127.0.0.1:{metrics_port}", **env
    )
    return relay, metrics_port


async def metrics(port: int) -> dict[str, float]:
    """The relay's metrics, as {name without the checkout_relay_ prefix: value}."""
    return {
        name.removeprefix("checkout_relay_"): value
        for name, value in (await scrape(port)).items()
        if name.startswith("checkout_relay_")
    }


async def metric_at_least(port: int, name: str, value: float) -> bool:
    try:
        return (await metrics(port)).get(name, -1) >= value
    except OSError:
        return False


async def upload(stub: pb_grpc.CheckoutServiceAsyncStub, seed: int) -> str:
    """A real upload through the in-process server; returns its event id."""
    data = mp4_bytes(3000, seed=seed)
    requests = [
        pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename=f"clip-{seed}.mp4")),
        pb.UploadVideoRequest(chunk=data),
    ]
    response = await stub.UploadVideo(iter(requests), timeout=30)
    assert response.status == "ok"
    return str(response.event_id)


async def insert_events(outbox: AsyncCollection[Document], count: int) -> list[str]:
    """Events written the way uploads write them (an outbox message and its status record,
    outbox/document.py), in a few inserts."""
    documents = [new_document() for _ in range(count)]
    statuses = outbox.database[STATUS_COLLECTION]
    for start in range(0, count, 100):
        chunk = documents[start : start + 100]
        await insert_records(statuses, [status_document(d) for d in chunk])
        await outbox.insert_many(chunk)
    return [str(d["_id"]) for d in documents]


async def statuses(outbox: AsyncCollection[Document], ids: Sequence[str]) -> Counter[str]:
    found = await outbox.find({"_id": {"$in": list(ids)}}, {"status": 1}).to_list()
    assert len(found) == len(ids), "an event disappeared from the outbox"
    return Counter(str(d["status"]) for d in found)


async def ids_with(outbox: AsyncCollection[Document], status: str) -> set[str]:
    return {str(d["_id"]) for d in await outbox.find({"status": status}, {"_id": 1}).to_list()}


async def count_status(outbox: AsyncCollection[Document], status: str) -> int:
    return await outbox.count_documents({"status": status})


async def all_sent(outbox: AsyncCollection[Document], total: int) -> bool:
    return await count_status(outbox, "sent") == total


async def read_topic(kafka: Kafka, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of the topic, from the beginning to the end offsets of now (so duplicates
    anywhere in the log are counted, not only up to the first copy of each key)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not consumer.assignment():  # without a group: every partition, once known
                batch = await consumer.getmany(timeout_ms=200)
                for part in batch.values():
                    records.extend(part)
            tps = sorted(consumer.assignment())
            end = await consumer.end_offsets(tps)
            while True:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= end[tp] for tp in tps):
                    break
                batch = await consumer.getmany(*tps, timeout_ms=500)
                for part in batch.values():
                    records.extend(part)
    finally:
        await consumer.stop()
    return records


def key_counts(records: Sequence[Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for record in records:
        key = record.key.decode()
        assert dict(record.headers)["event_id"] == record.key
        assert json.loads(record.value)["event_id"] == key
        counts[key] += 1
    return counts


def log_lines(relay: PythonService) -> list[str]:
    return relay.log_path.read_text(errors="replace").splitlines()


def process_state(relay: PythonService) -> str:
    """The kernel's state letter of the relay's process (`T`: stopped by a signal, `S`/`R`:
    running; "" once it has exited): `running` alone is true for a paused process too."""
    pid = relay.pid
    if pid is None:
        return ""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]  # the field after the command's parentheses


def exit_code(relay: PythonService) -> int | None:
    # devstack keeps the Popen private; the test needs the real exit status.
    proc = relay._proc
    return None if proc is None else proc.poll()


# --- tests ----------------------------------------------------------------------------------


# The sum of this test's worst-case waits (own Kafka 120, relay 60, first uploads 60, the
# outage up to 90, retries 30, Kafka back 120, all sent 150, the topic read 60, relay stop 15)
# with a margin: a slow run fails at the wait that was slow, with its message.
@pytest.mark.timeout(780)
async def test_kafka_outage_while_uploads_continue(
    stub: pb_grpc.CheckoutServiceAsyncStub,
    outbox: AsyncCollection[Document],
    own_relays: Relays,
    own_kafka: Kafka,
    topic: str,
) -> None:
    outage_s = 30.0  # at least; longer until the uploads below are done
    uploads_during = 10
    relay, metrics_port = await start_relay(
        own_relays,
        "relay-outage",
        RELAY_SEND_TIMEOUT_S="3",
        RELAY_BACKOFF_INITIAL_S="0.2",
        RELAY_BACKOFF_MAX_S="2",
    )
    before = [await upload(stub, seed) for seed in range(3)]
    await wait_until(lambda: all_sent(outbox, len(before)), timeout_s=60, what="first uploads sent")

    await asyncio.to_thread(own_kafka.stop)
    outage_started = time.monotonic()
    uploaded: list[str] = []  # real uploads while Kafka is down
    burst: list[str] = []  # and a burst written the way uploads write events
    while time.monotonic() - outage_started < outage_s or len(uploaded) < uploads_during:
        assert time.monotonic() - outage_started < 90, f"{len(uploaded)} uploads in 90 s"
        if len(uploaded) < 20:
            uploaded.append(await upload(stub, 100 + len(uploaded)))  # needs no Kafka
        if not burst and time.monotonic() - outage_started > 5:
            burst = await insert_events(outbox, 60)
        during = uploaded + burst
        seen = await statuses(outbox, during)
        assert seen == Counter({"new": len(during)}), f"during the outage: {seen}"
        assert await count_status(outbox, "failed") == 0
        await asyncio.sleep(1.0)  # the outage's own length, not a readiness wait
    assert len(uploaded) >= uploads_during
    assert len(burst) == 60
    # The relay did try (and rescheduled) during the outage, and is still alive.
    await wait_until(
        lambda: metric_at_least(metrics_port, "retries_total", 1),
        timeout_s=30,
        what="the relay to retry during the outage",
    )
    retried = await outbox.count_documents({"_id": {"$in": during}, "attempts": {"$gt": 0}})
    assert retried > 0
    assert await statuses(outbox, during) == Counter({"new": len(during)})

    await asyncio.to_thread(own_kafka.start, 120)
    everything = before + during
    await wait_until(
        lambda: all_sent(outbox, len(everything)),
        timeout_s=150,
        what="every event sent after Kafka returned",
    )
    assert await count_status(outbox, "failed") == 0
    assert await statuses(outbox, everything) == Counter({"sent": len(everything)})

    counts = key_counts(await read_topic(own_kafka, topic))
    assert set(counts) == set(everything)  # none lost, nothing foreign

    # The producer abandoned during the outage was really closed: no sender task of it was
    # still retrying when the relay stopped.
    await asyncio.to_thread(relay.stop)
    assert not [line for line in log_lines(relay) if "_sender_routine" in line]


# The sum of this test's worst-case waits (relay A publishing 90, paused 60, all sent 150,
# resumed 30, all sent 150, the topic read 60) with a margin, as above.
@pytest.mark.timeout(600)
async def test_paused_relay_is_taken_over_and_stops_on_resume(
    outbox: AsyncCollection[Document], relays: Relays, kafka: Kafka, topic: str
) -> None:
    # Leases short enough for a quick takeover, long enough (renewed every third) that a
    # relay starved of CPU for a few seconds on a loaded machine keeps them: the
    # exactly-once checks below hold only while no lease lapses.
    short_leases = {
        "RELAY_LEASE_TTL_S": "10",
        "RELAY_CLOCK_SKEW_S": "1",
        "RELAY_BATCH_SIZE": "20",
    }
    relay_a, port_a = await start_relay(relays, "relay-a", **short_leases)
    # Each message is marked as soon as Kafka has its batch: the burst is large enough to be
    # still mostly unsent when A is paused after its first batch.
    burst = await insert_events(outbox, 400)
    await wait_until(
        lambda: metric_at_least(port_a, "published_total", 20),
        timeout_s=90,
        what="relay A publishing",
    )
    held_by_a = (await metrics(port_a))["shards_held"]
    assert held_by_a == SHARDS
    await asyncio.to_thread(relay_a.pause)
    unsent_at_pause = await count_status(outbox, "new")
    print(f"SIGSTOP with {unsent_at_pause} of {len(burst)} events unsent")
    assert unsent_at_pause > 10 * 20, "the burst was (nearly) done before the pause"
    assert process_state(relay_a) == "T"

    relay_b, port_b = await start_relay(relays, "relay-b", **short_leases)
    after_pause = await insert_events(outbox, 40)
    # B takes every shard once A's leases (and heartbeat) ran out, and publishes all.
    await wait_until(
        lambda: metric_at_least(port_b, "shards_held", SHARDS),
        timeout_s=60,
        what="relay B holding every shard",
    )
    total = len(burst) + len(after_pause)
    await wait_until(lambda: all_sent(outbox, total), timeout_s=150, what="all events sent")
    assert process_state(relay_a) == "T"  # still paused (not exited, not restarted)
    assert not await serving(relay_a.port)

    await asyncio.to_thread(relay_a.resume)
    # A sees the newer epochs (or its own run-out leases) and drops every shard it had.
    await wait_until(
        lambda: metric_at_least(port_a, "leases_lost_total", held_by_a),
        timeout_s=30,
        what="relay A dropping its taken-over shards",
    )
    assert any("lost shard to a newer epoch" in line for line in log_lines(relay_a)) or any(
        "lease ran out before renewal" in line for line in log_lines(relay_a)
    )
    # Both relays now share the shards (B releases half to A between batches): events
    # inserted from here on are published exactly once.
    after_resume = await insert_events(outbox, 40)
    total += len(after_resume)
    await wait_until(lambda: all_sent(outbox, total), timeout_s=150, what="all events sent")
    assert await count_status(outbox, "failed") == 0

    counts = key_counts(await read_topic(kafka, topic))
    assert set(counts) == set(burst + after_pause + after_resume)
    assert max(counts.values()) <= 2, "more than one duplicate of an event"
    assert [k for k in after_pause + after_resume if counts[k] != 1] == []
    duplicated = [k for k, n in counts.items() if n > 1]
    assert len(duplicated) <= 20  # only the one batch A had in flight at the pause
    # Both relays run on, neither paused nor exited.
    assert process_state(relay_a) in {"S", "R"}
    assert process_state(relay_b) in {"S", "R"}
    assert await serving(relay_a.port)
    assert await serving(relay_b.port)


# The sum of this test's worst-case waits (the burst in flight 90, the exit 30, two topic
# reads 120, the takeover 2 x 30, all sent 150) with a margin, as above.
@pytest.mark.timeout(480)
async def test_sigterm_finishes_batch_and_releases_leases(
    outbox: AsyncCollection[Document],
    database: AsyncDatabase[Document],
    settings: ServerSettings,
    relays: Relays,
    kafka: Kafka,
    topic: str,
) -> None:
    # A long lease: a relay that waited for its leases to run out instead of releasing them
    # would show here as a stop, or a takeover, of a minute or more.
    lease_ttl_s = 90.0
    env = {
        "RELAY_LEASE_TTL_S": str(lease_ttl_s),
        "RELAY_CLOCK_SKEW_S": "1",
        "RELAY_BATCH_SIZE": "10",
        "RELAY_SEND_TIMEOUT_S": "10",
    }
    relay_a, port_a = await start_relay(relays, "relay-term-a", **env)
    burst = await insert_events(outbox, 400)
    await wait_until(
        lambda: metric_at_least(port_a, "published_total", 10),
        timeout_s=90,
        what="relay A publishing",
    )
    pid = relay_a.pid
    assert pid is not None
    signalled = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    unsent_at_signal = await count_status(outbox, "new")
    print(f"SIGTERM with {unsent_at_signal} of {len(burst)} events unsent")
    assert unsent_at_signal > 10 * 10, "the burst was (nearly) done before SIGTERM"

    async def exited() -> bool:
        return not relay_a.running

    # The batch in flight (bounded by RELAY_SEND_TIMEOUT_S) and the lease release; far less
    # than the lease TTL a relay that did not release would hold the shards for.
    await wait_until(exited, timeout_s=lease_ttl_s / 3, what="relay A to exit after SIGTERM")
    print(f"relay A stopped {time.monotonic() - signalled:.1f}s after SIGTERM")
    assert exit_code(relay_a) == 0, log_lines(relay_a)[-20:]
    assert any("relay stopped" in line for line in log_lines(relay_a))

    # Everything A got into Kafka is marked sent (the batch in flight was finished), and
    # nothing else is: the burst was interrupted, not drained.
    sent = await ids_with(outbox, "sent")
    assert 0 < len(sent) < len(burst), "the burst finished before A stopped"
    published_by_a = key_counts(await read_topic(kafka, topic))
    assert set(published_by_a) == sent
    assert await count_status(outbox, "failed") == 0

    # Its leases are released and it left the member list.
    prefix = settings.mongo_outbox_collection
    leases = await database[f"{prefix}_relay_leases"].find({}).to_list()
    newest: dict[int, Document] = {}
    for lease in leases:
        if lease["shard"] not in newest or lease["epoch"] > newest[lease["shard"]]["epoch"]:
            newest[lease["shard"]] = lease
    assert sorted(newest) == list(range(SHARDS))
    assert all(lease["owner"] == "relay-term-a" and lease["released"] for lease in newest.values())
    assert await database[f"{prefix}_relay_members"].count_documents({}) == 0

    # The next relay takes every shard at once, long before A's leases would have expired
    # (at least 2/3 of the TTL after A's last renewal).
    _, port_b = await start_relay(relays, "relay-term-b", **env)
    b_ready = time.monotonic()
    sent_before_b = len(sent)
    # At the earliest, A's unreleased leases would run out 2/3 of the TTL (60 s) after it
    # stopped; a wide margin for a loaded machine below that.
    takeover_s = lease_ttl_s / 3
    await wait_until(
        lambda: metric_at_least(port_b, "shards_held", SHARDS),
        timeout_s=takeover_s,
        what="relay B holding every shard",
    )
    await wait_until(
        lambda: _more_sent(outbox, sent_before_b),
        timeout_s=takeover_s,
        what="relay B publishing",
    )
    assert time.monotonic() - b_ready < takeover_s
    leases = await database[f"{prefix}_relay_leases"].find({"owner": "relay-term-b"}).to_list()
    assert sorted(lease["shard"] for lease in leases) == list(range(SHARDS))
    assert all(lease["epoch"] == newest[lease["shard"]]["epoch"] + 1 for lease in leases)

    await wait_until(lambda: all_sent(outbox, len(burst)), timeout_s=150, what="all events sent")
    counts = key_counts(await read_topic(kafka, topic))
    assert set(counts) == set(burst)
    # A marked all it published, so B republished nothing.
    assert [k for k, n in counts.items() if n > 1] == []


async def _more_sent(outbox: AsyncCollection[Document], than: int) -> bool:
    return await count_status(outbox, "sent") > than
