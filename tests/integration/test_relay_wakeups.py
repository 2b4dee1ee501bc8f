"""Wake-ups from the server to the relay, against real FerretDB, MinIO and Kafka: with Kafka
stopped uploads go on, and once it is back every event reaches Kafka without waiting for the
relay's safety-net poll, also the ones uploaded after the outage. A flood of forged wake-ups
(unsigned, or signed with another secret) is dropped and counted while the server's signed
ones still wake the relay.

The relay runs as a real process with a safety-net poll of SAFETY_NET_S, far longer than the
latencies asserted: an event that waited for that poll (a lost wake-up) fails the test, while
the margins below leave a loaded 2-core machine several times the usual latency.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.adapters import udp_wake
from checkout_server.adapters.udp_wake import WakeSigner
from checkout_server.config import ServerSettings
from checkout_server.outbox.document import Document
from checkout_server.wiring.server import App, create_app
from devstack import Kafka, free_port
from tests.integration.metrics_scrape import scrape
from tests.integration.storage_checks import wait_until
from tests.integration.test_relay import Relays
from tests.integration.test_relay_faults import count_status, key_counts, read_topic, upload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SAFETY_NET_S = 60.0
# Upload answered -> `sent` (Kafka acknowledged) for an idle relay woken by the server:
# about 0.05 s here; a lost wake-up would take up to SAFETY_NET_S.
WOKEN_WITHIN_S = 8.0
# Kafka back -> every event of the outage sent: the producer reconnects within about
# RELAY_SEND_TIMEOUT_S plus a backoff step (1 s at most here); SAFETY_NET_S would be a miss.
AFTER_OUTAGE_WITHIN_S = 30.0


@pytest.fixture
def topic() -> str:
    return f"relay-wakeups-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def own_relays(
    settings: ServerSettings, own_kafka: Kafka, topic: str, tmp_path: Path
) -> Iterator[Relays]:
    group = Relays(settings, own_kafka, topic, tmp_path)
    yield group
    group.stop_all()


@pytest.fixture
async def woken_app(settings: ServerSettings, relay_wake_port: int) -> AsyncIterator[App]:
    """An in-process server that wakes the relay after every outbox message."""
    app = await create_app(
        settings.replace(relay_wake_targets=frozenset({f"127.0.0.1:{relay_wake_port}"}))
    )
    await app.start()
    yield app
    await app.stop(grace_s=1.0)


@pytest.fixture
async def woken_stub(woken_app: App) -> AsyncIterator[pb_grpc.CheckoutServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{woken_app.port}") as channel:
        yield pb_grpc.CheckoutServiceStub(channel)


@pytest.fixture
def relay_metrics_port() -> int:
    return free_port()


@pytest.fixture
def relay_wake_port(own_relays: Relays, relay_metrics_port: int) -> int:
    """A relay with a long safety-net poll; it hears wake-ups on its health port (UDP)."""
    relay = own_relays.start(
        "relay-woken",
        RELAY_METRICS_ADDR=f"127.0.0.1:{relay_metrics_port}",
        RELAY_POLL_INTERVAL_S=str(SAFETY_NET_S),
        # Renewals are not polls, but a lease rebalance also ends an idle wait: keep those
        # rare too, so only a wake-up explains a quick pick-up.
        RELAY_LEASE_TTL_S="90",
        RELAY_CLOCK_SKEW_S="2",
        RELAY_SEND_TIMEOUT_S="3",
        RELAY_BACKOFF_INITIAL_S="0.2",
        RELAY_BACKOFF_MAX_S="1",
    )
    return relay.port


async def _sent_within(
    statuses: AsyncCollection[Document], ids: Sequence[str], timeout_s: float
) -> float:
    """Seconds until every one of `ids` has a `sent` status record (bounded by timeout_s)."""
    started = time.monotonic()

    async def all_sent() -> bool:
        query = {"_id": {"$in": list(ids)}, "status": "sent"}
        return await statuses.count_documents(query) == len(ids)

    await wait_until(all_sent, timeout_s=timeout_s, what=f"{len(ids)} events sent")
    return time.monotonic() - started


async def test_no_wake_up_is_lost_across_a_kafka_outage(
    woken_stub: pb_grpc.CheckoutServiceAsyncStub,
    status_collection: AsyncCollection[Document],
    outbox_collection: AsyncCollection[Document],
    own_kafka: Kafka,
    topic: str,
) -> None:
    # The relay is idle (nothing was ever due): an upload wakes it.
    first = await upload(woken_stub, 1)
    took = await _sent_within(status_collection, [first], SAFETY_NET_S / 2)
    assert took < WOKEN_WITHIN_S, f"the first event took {took:.1f}s: not woken"

    await asyncio.to_thread(own_kafka.stop)
    during = [await upload(woken_stub, 100 + n) for n in range(10)]  # needs no Kafka
    assert await count_status(status_collection, "failed") == 0
    assert await status_collection.count_documents({"_id": {"$in": during}, "status": "new"}) == 10

    await asyncio.to_thread(own_kafka.start, 120)
    took = await _sent_within(status_collection, during, SAFETY_NET_S / 2)
    assert took < AFTER_OUTAGE_WITHIN_S, f"the outage's events took {took:.1f}s after Kafka"

    # Idle again after the outage: every later upload is woken for, none waits for the poll.
    latencies = []
    after = []
    for n in range(5):
        event_id = await upload(woken_stub, 200 + n)
        latencies.append(await _sent_within(status_collection, [event_id], SAFETY_NET_S / 2))
        after.append(event_id)
    assert max(latencies) < WOKEN_WITHIN_S, f"after the outage: {latencies}"

    counts = key_counts(await read_topic(own_kafka, topic))
    assert set(counts) == {first, *during, *after}
    assert await outbox_collection.count_documents({"status": "new"}) == 0


async def test_forged_wake_ups_are_dropped_and_counted_while_signed_ones_wake(
    woken_stub: pb_grpc.CheckoutServiceAsyncStub,
    status_collection: AsyncCollection[Document],
    relay_wake_port: int,
    relay_metrics_port: int,
) -> None:
    forged = [
        b"wake",  # what wake-ups were before they were signed
        bytes(udp_wake.SIZE),
        WakeSigner("another-secret-of-sixteen").sign(),
    ]
    sent = 0
    flooding = True

    async def flood() -> None:
        nonlocal sent
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            while flooding:
                for _ in range(20):
                    sock.sendto(forged[sent % len(forged)], ("127.0.0.1", relay_wake_port))
                    sent += 1
                await asyncio.sleep(0.002)
        finally:
            sock.close()

    attack = asyncio.create_task(flood())
    try:
        await wait_until(lambda: sent >= 1000, what="the flood under way")
        latencies = []
        for n in range(3):  # the server's own, signed, wake-ups still get through
            event_id = await upload(woken_stub, 300 + n)
            latencies.append(await _sent_within(status_collection, [event_id], SAFETY_NET_S / 2))
    finally:
        flooding = False
        await attack
    assert max(latencies) < WOKEN_WITHIN_S, f"woken amid the flood: {latencies}"

    async def refused() -> float:
        return (await scrape(relay_metrics_port))["checkout_relay_wake_ups_refused_total"]

    # Every forged datagram the relay read was refused and counted: a second's read budget
    # at least (it reads no more, and the kernel drops the rest), never more than were sent.
    await wait_until(
        lambda: _at_least(refused(), min(sent, udp_wake.READ_BUDGET_PER_S)),
        what=f"a second's budget of {sent} forged counted",
    )
    assert await refused() <= sent


async def _at_least(value: Awaitable[float], floor: float) -> bool:
    return await value >= floor
