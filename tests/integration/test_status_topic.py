"""Status changes pushed through the status topic (STATUS_TOPIC), against real FerretDB,
MinIO and Kafka: two servers in-process, a relay process, and the runner's announcer.

The servers' safety-net poll is SAFETY_NET_S, far longer than any wait here, and their
pollers' query counts are checked: a change that reached a watcher came through the topic.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from miniopy_async.api import Minio

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_runner.adapters.kafka_announcer import KafkaResultAnnouncer
from checkout_server.config import ServerSettings
from checkout_server.domain import EventStatus
from checkout_server.outbox.announcement import message_of
from checkout_server.wiring.server import App, create_app
from devstack import Kafka, free_port
from tests.helpers import outbox_event, runner_event, wait_until
from tests.integration.apps import started_app
from tests.integration.metrics_scrape import scrape
from tests.integration.test_relay import Relays
from tests.integration.test_relay_faults import upload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SAFETY_NET_S = 120.0
SEEN_WITHIN_S = 10.0

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub


@pytest.fixture
def topic_settings(settings: ServerSettings, kafka: Kafka) -> ServerSettings:
    return settings.replace(
        kafka_bootstrap_servers=kafka.bootstrap,
        status_topic=f"status-{uuid.uuid4().hex[:10]}",
        watch_poll_interval_s=SAFETY_NET_S,
    )


@pytest.fixture
async def servers(topic_settings: ServerSettings) -> AsyncIterator[tuple[App, App]]:
    """Two servers on one database and one status topic, each reading it."""
    async with started_app(topic_settings) as first, started_app(topic_settings) as second:
        await wait_until(lambda: live(first) and live(second), timeout_s=60)
        yield first, second


@pytest.fixture
def relays(topic_settings: ServerSettings, kafka: Kafka, tmp_path: Path) -> Iterator[Relays]:
    group = Relays(topic_settings, kafka, f"videos-{uuid.uuid4().hex[:10]}", tmp_path)
    yield group
    group.stop_all()


class Watch:
    """An all-events WatchStatus stream, its statuses by event as they come."""

    def __init__(self, stub: Stub) -> None:
        self.seen: dict[str, list[str]] = {}
        self._call = stub.WatchStatus(pb.WatchStatusRequest())
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for update in self._call:
            if not update.heartbeat:
                self.seen.setdefault(update.event_id, []).append(update.status)

    async def sees(self, event_id: str, status: str) -> None:
        await wait_until(lambda: status in self.seen.get(event_id, []), timeout_s=SEEN_WITHIN_S)

    async def close(self) -> None:
        self._call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def put_json(s3: Minio, bucket: str, key: str, body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    await s3.put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/json")


async def test_a_watcher_sees_every_change_written_anywhere_without_a_query(
    servers: tuple[App, App], relays: Relays, s3: Minio, kafka: Kafka, bucket: str
) -> None:
    """Upload on the first server, one of three relays marks it sent, the runner announces
    its result: a watcher of the second server sees new, sent and ready, and its poller
    never ran."""
    first, second = servers
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
    ):
        watch = Watch(pb_grpc.CheckoutServiceStub(two))
        try:
            await wait_until(lambda: second.hub.watchers == 1, timeout_s=10)
            event_id = await upload(pb_grpc.CheckoutServiceStub(one), seed=1)
            await watch.sees(event_id, "new")
            # Started off the event loop: the servers share it, and a loop held for as long
            # as three relays take to start (0.8 s each on this machine) lets the feed fall
            # behind its liveness window (the watchers would poll).
            names = ("relay-a", "relay-b", "relay-c")
            await asyncio.gather(*(asyncio.to_thread(relays.start, name) for name in names))
            await watch.sees(event_id, "sent")
            key = f"output/{event_id}.json"  # upload: event id = video id
            await put_json(s3, bucket, key, {"status": "ok", "frames": []})
            announcer = KafkaResultAnnouncer(
                lambda: AIOKafkaProducer(bootstrap_servers=kafka.bootstrap),
                topic=second.settings.status_topic,
                timeout_s=10,
            )
            try:
                await announcer.announce(runner_event(event_id, event_id, bucket), key)
            finally:
                await announcer.close()
            assert announcer.failed == 0
            await watch.sees(event_id, "ready")
        finally:
            await watch.close()
    assert watch.seen[event_id] == ["new", "sent", "ready"]
    assert second.hub.polls == 0  # every change came through the topic


async def test_a_watcher_of_a_restarted_server_sees_the_rest(
    topic_settings: ServerSettings, relays: Relays
) -> None:
    """A watcher of the second server sees `new`; the server restarts and its stream ends;
    the watcher subscribes again at once, before the new process reads the topic, and gets
    the current status, then the relay's `sent` (from the database until the topic is read,
    then from the topic)."""
    async with started_app(topic_settings) as first:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one:
            event_id = await upload(pb_grpc.CheckoutServiceStub(one), seed=5)
        request = pb.WatchStatusRequest(event_id=event_id)
        second = await create_app(topic_settings)
        await second.start()
        # Read the topic first: a stop while aiokafka still connects can leave a connection
        # of its own unclosed (a warning, which fails the test).
        await wait_until(lambda: live(second), timeout_s=60)
        stopped = False
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two:
                updates: Any = pb_grpc.CheckoutServiceStub(two).WatchStatus(request, timeout=60)
                first_seen = (await updates.read()).status
                await second.stop(grace_s=1.0)  # the restart
                stopped = True
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await updates.read()  # no heartbeat comes first: the stream ends at once
        finally:
            if not stopped:
                await second.stop(grace_s=1.0)
        assert (first_seen, ended.value.code()) == ("new", grpc.StatusCode.UNAVAILABLE)
        after: list[str] = []
        async with (
            started_app(topic_settings, watch_poll_interval_s=1.0) as restarted,
            grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as two,
        ):
            updates = pb_grpc.CheckoutServiceStub(two).WatchStatus(request, timeout=60)
            async for update in updates:
                if update.heartbeat:
                    continue
                after.append(update.status)
                if update.status == "new":
                    await asyncio.to_thread(relays.start, "relay-after-restart")
                if update.status == "sent":
                    break
            updates.cancel()
    assert after == ["new", "sent"]


async def test_a_status_change_without_the_secret_is_refused_and_counted(
    topic_settings: ServerSettings, kafka: Kafka
) -> None:
    """Whoever may write the topic without WAKE_SECRET (the runner's Kafka user) cannot
    show a watcher a status: the change is dropped, and counted in the metrics."""
    async with started_app(topic_settings, metrics_addr="127.0.0.1:0") as app:
        await wait_until(lambda: live(app), timeout_s=60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            watch = Watch(pb_grpc.CheckoutServiceStub(channel))
            forged = outbox_event(str(uuid.uuid4()), status=EventStatus.SENT)
            producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
            await producer.start()
            try:
                await producer.send_and_wait(
                    topic_settings.status_topic, message_of(forged), key=forged.event_id.encode()
                )
            finally:
                await producer.stop()
            assert app.metrics is not None
            port = app.metrics.port

            async def refused() -> bool:
                samples = await scrape(port)
                return samples["checkout_status_changes_refused_total"] == 1

            await wait_until(refused, timeout_s=SEEN_WITHIN_S)
            await watch.close()
        assert forged.event_id not in watch.seen
        assert (await scrape(port))["checkout_status_records_skipped_total"] == 0


async def test_a_result_nobody_announces_is_found_by_looking(
    servers: tuple[App, App], s3: Minio, bucket: str
) -> None:
    """A third-party runner writes the result JSON only: a single-event watcher of the other
    server sees `ready` from its checks of watched events."""
    first, second = servers
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
    ):
        event_id = await upload(pb_grpc.CheckoutServiceStub(one), seed=2)
        updates = pb_grpc.CheckoutServiceStub(two).WatchStatus(
            pb.WatchStatusRequest(event_id=event_id), timeout=60
        )
        statuses = []
        async for update in updates:
            if update.heartbeat:
                continue
            statuses.append(update.status)
            if update.status == "new":
                await put_json(s3, bucket, f"output/{event_id}.json", {"status": "ok"})
        assert statuses == ["new", "ready"]


async def test_watchers_read_the_database_while_kafka_is_down(
    settings: ServerSettings, own_kafka: Kafka
) -> None:
    """Kafka stops: the second server's feed is not live, and its watcher still sees the
    first server's upload (the first's announcement fails and wakes it, or its poll finds
    it). Kafka returns: the feed is live again and pushes the next change."""
    port = free_port()
    topic_settings = settings.replace(
        kafka_bootstrap_servers=own_kafka.bootstrap,
        status_topic="status-outage",
        status_send_timeout_s=2.0,
        watch_poll_interval_s=SAFETY_NET_S,
    )
    async with (
        started_app(topic_settings, watch_wake_targets=frozenset({f"127.0.0.1:{port}"})) as first,
        started_app(topic_settings, grpc_addr=f"127.0.0.1:{port}") as second,
    ):
        await wait_until(lambda: live(first) and live(second), timeout_s=60)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one,
            grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
        ):
            watch = Watch(pb_grpc.CheckoutServiceStub(two))
            try:
                await wait_until(lambda: second.hub.watchers == 1, timeout_s=10)
                await asyncio.to_thread(own_kafka.stop)
                await wait_until(lambda: not live(second), timeout_s=30)
                during = await upload(pb_grpc.CheckoutServiceStub(one), seed=3)
                await watch.sees(during, "new")
                assert second.hub.polls > 0  # from the database
                await asyncio.to_thread(own_kafka.start, 120)
                await wait_until(lambda: live(second), timeout_s=60)
                polls = second.hub.polls
                after = await upload(pb_grpc.CheckoutServiceStub(one), seed=4)
                await watch.sees(after, "new")
                # Live again: the catch-up read when it returned, then none for the change.
                assert second.hub.polls <= polls + 1
            finally:
                await watch.close()


def live(app: App) -> bool:
    """Whether the server reads the status topic."""
    return app.feed is not None and app.feed.live
