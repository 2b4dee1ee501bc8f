"""Wake-ups from the relay to the server's watchers, against real FerretDB, MinIO and Kafka:
WatchStatus shows `sent` as soon as the relay marks it, not at the server's safety-net poll.

The server runs in-process with a safety-net poll of SAFETY_NET_S, far longer than the
latencies asserted, so a change that reached a watcher came with a wake-up: `new` with the
server's own (in-process) one, `sent` with the relay's datagram to WATCH_WAKE_ADDR.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from devstack import Kafka, free_port
from tests.integration.storage_checks import wait_until
from tests.integration.test_relay import Relays
from tests.integration.test_relay_faults import upload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SAFETY_NET_S = 120.0
# Upload answered -> `sent` on the watch stream: about 0.1 s here (the relay's
# publish and mark, then one datagram and one query); a lost wake-up takes SAFETY_NET_S.
WOKEN_WITHIN_S = 10.0
UPLOADS = 5


@pytest.fixture
def topic() -> str:
    return f"watch-wakeups-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def grpc_port() -> int:
    return free_port()


@pytest.fixture
def own_relays(
    settings: ServerSettings, own_kafka: Kafka, topic: str, tmp_path: Path
) -> Iterator[Relays]:
    group = Relays(settings, own_kafka, topic, tmp_path)
    yield group
    group.stop_all()


@pytest.fixture
def relay_wake_port(own_relays: Relays, grpc_port: int) -> int:
    """A relay that wakes the server's watchers (UDP, the server's gRPC port) after each mark."""
    relay = own_relays.start("relay-waking", WATCH_WAKE_TARGETS=f"127.0.0.1:{grpc_port}")
    return relay.port


@pytest.fixture
async def watched_app(
    settings: ServerSettings, grpc_port: int, relay_wake_port: int
) -> AsyncIterator[App]:
    app = await create_app(
        settings.replace(
            grpc_addr=f"127.0.0.1:{grpc_port}",
            watch_poll_interval_s=SAFETY_NET_S,
            relay_wake_targets=frozenset({f"127.0.0.1:{relay_wake_port}"}),
        )
    )
    await app.start()
    yield app
    await app.stop(grace_s=1.0)


async def test_watchers_see_sent_when_the_relay_marks_it(watched_app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{watched_app.port}") as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        seen: dict[tuple[str, str], float] = {}
        changed = asyncio.Event()

        async def watch() -> None:
            async for update in stub.WatchStatus(pb.WatchStatusRequest()):
                if update.event_id:
                    seen.setdefault((update.event_id, update.status), time.monotonic())
                    changed.set()

        watcher = asyncio.create_task(watch())
        try:
            await wait_until(
                lambda: watched_app.hub.watchers > 0, timeout_s=10, what="the watch subscribed"
            )
            latencies: dict[str, list[float]] = {"new": [], "sent": []}
            for n in range(UPLOADS):
                event_id = await upload(stub, n)
                answered = time.monotonic()
                # A watcher gets the latest change of an event: `sent` may replace `new`.
                for status, accepted in (("new", ("new", "sent")), ("sent", ("sent",))):
                    keys = [(event_id, a) for a in accepted]
                    at = await _seen(seen, changed, keys, SAFETY_NET_S / 2)
                    latencies[status].append(max(0.0, at - answered))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert max(latencies["new"]) < WOKEN_WITHIN_S, latencies
    assert max(latencies["sent"]) < WOKEN_WITHIN_S, latencies
    # The feed did not poll its way there: a few looks per upload, not one per 0.25 s.
    assert watched_app.hub.polls <= 1 + 4 * UPLOADS


async def _seen(
    seen: dict[tuple[str, str], float],
    changed: asyncio.Event,
    keys: list[tuple[str, str]],
    timeout_s: float,
) -> float:
    """When the first of `keys` (event id, status) reached the watcher."""
    deadline = time.monotonic() + timeout_s
    while not any(key in seen for key in keys):
        changed.clear()
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{keys} never reached the watcher"
        try:
            await asyncio.wait_for(changed.wait(), remaining)
        except TimeoutError:
            continue
    return min(seen[key] for key in keys if key in seen)
