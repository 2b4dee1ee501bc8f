"""WatchStatus: one change feed per process, fanned out to every watcher."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from miniopy_async.api import Minio

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.adapters.mongo_relay_store import MongoOutboxRelayStore
from checkout_server.wiring.server import App
from tests.helpers import error_details
from tests.integration.storage_checks import wait_until
from tests.integration.test_status import upload, write_result

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def play_relay(relay_store: MongoOutboxRelayStore, event_id: str) -> None:
    """What the relay does once Kafka acknowledged an event."""
    await relay_store.mark_sent([event_id], datetime.now(UTC))


async def test_watch_sees_new_sent_ready_and_ends(
    stub: Stub, s3: Minio, bucket: str, relay_store: MongoOutboxRelayStore
) -> None:
    uploaded = await upload(stub)
    call = stub.WatchStatus(pb.WatchStatusRequest(event_id=uploaded.event_id))
    seen: list[str] = []

    async def read() -> None:
        async for update in call:
            if not update.heartbeat:
                seen.append(update.status)

    reader = asyncio.create_task(read())
    await wait_until(lambda: _is(seen, ["new"]), what="the current status")
    await play_relay(relay_store, uploaded.event_id)
    await wait_until(lambda: _is(seen, ["new", "sent"]), what="sent")
    await write_result(s3, bucket, uploaded.video_id, b'{"objects": []}')
    await asyncio.wait_for(reader, 30)  # the stream ends after `ready`
    assert seen == ["new", "sent", "ready"]


async def _is(seen: list[str], expected: list[str]) -> bool:
    return seen == expected


async def test_watch_of_a_finished_event_sends_it_and_ends(
    stub: Stub, s3: Minio, bucket: str
) -> None:
    uploaded = await upload(stub)
    await write_result(s3, bucket, uploaded.video_id, b"{}")
    updates = [u async for u in stub.WatchStatus(pb.WatchStatusRequest(event_id=uploaded.event_id))]
    assert [u.status for u in updates] == ["ready"]


async def test_watch_errors(stub: Stub) -> None:
    for event_id, code, reason in [
        ("12345678-1234-4234-8234-123456789012", grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND"),
        ("nope", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT_ID"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.WatchStatus(pb.WatchStatusRequest(event_id=event_id)):
                pass
        assert error_details(caught.value)[:2] == (code, reason)


async def test_watch_all_streams_every_change(
    app: App, stub: Stub, relay_store: MongoOutboxRelayStore
) -> None:
    call = stub.WatchStatus(pb.WatchStatusRequest())
    got: list[tuple[str, str]] = []

    async def read() -> None:
        async for update in call:
            if not update.heartbeat:
                got.append((update.event_id, update.status))

    reader = asyncio.create_task(read())
    await wait_until(lambda: _watchers(app, 1), what="the watch to start")
    first, second = await upload(stub), await upload(stub)
    await play_relay(relay_store, first.event_id)
    # Changes of one event may be coalesced into the latest: every event reaches its latest.
    expected = {(second.event_id, "new"), (first.event_id, "sent")}
    await wait_until(lambda: _contains(got, expected), what="all changes")
    call.cancel()
    await asyncio.gather(reader, return_exceptions=True)


async def _contains(got: list[tuple[str, str]], expected: set[tuple[str, str]]) -> bool:
    return expected <= set(got)


async def test_a_thousand_watchers_share_one_feed(
    app: App, stub: Stub, s3: Minio, bucket: str
) -> None:
    uploaded = await upload(stub)
    request = pb.WatchStatusRequest(event_id=uploaded.event_id)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") for _ in range(10)]
    stubs: list[Stub] = [pb_grpc.CheckoutServiceStub(c) for c in channels]
    ready_at: list[float] = []
    first_seen = 0

    async def watch(watcher: Stub) -> None:
        nonlocal first_seen
        async for update in watcher.WatchStatus(request):
            if update.status == "new":
                first_seen += 1
            if update.status == "ready":
                ready_at.append(time.monotonic())

    try:
        watchers = [asyncio.create_task(watch(stubs[i % 10])) for i in range(1000)]
        await wait_until(lambda: _at_least(lambda: first_seen, 1000), timeout_s=120, what="1000")
        assert app.hub.watchers == 1000

        # The feed's query rate does not depend on the number of watchers.
        polls_before, started = app.hub.polls, time.monotonic()
        await asyncio.sleep(2.0)  # a measurement window, not a readiness wait
        polls_per_s = (app.hub.polls - polls_before) / (time.monotonic() - started)
        assert polls_per_s <= 1 / app.settings.watch_poll_interval_s + 1

        written = time.monotonic()
        await write_result(s3, bucket, uploaded.video_id, b"{}")
        await asyncio.wait_for(asyncio.gather(*watchers), 60)
        assert len(ready_at) == 1000
        delays = sorted(t - written for t in ready_at)
        print(f"1000 watchers: ready delivered p50 {delays[500]:.3f}s p99 {delays[990]:.3f}s")
        assert delays[990] < 10.0  # generous for a loaded CI machine; bench/ measures it
    finally:
        for channel in channels:
            await channel.close(None)


async def _at_least(value: Any, n: int) -> bool:
    return bool(value() >= n)


async def test_a_watcher_that_never_reads_does_not_stall_others(
    app: App, stub: Stub, relay_store: MongoOutboxRelayStore
) -> None:
    events = [(await upload(stub)).event_id for _ in range(3)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as stalled_channel:
        stalled: Stub = pb_grpc.CheckoutServiceStub(stalled_channel)
        stuck = stalled.WatchStatus(pb.WatchStatusRequest())  # never read
        await wait_until(lambda: _watchers(app, 1), what="the stalled watcher")

        got: set[str] = set()

        async def read() -> None:
            async for update in stub.WatchStatus(pb.WatchStatusRequest()):
                if update.status == "sent":
                    got.add(update.event_id)

        reader = asyncio.create_task(read())
        await wait_until(lambda: _watchers(app, 2), what="the reading watcher")
        # Many changes: the stalled stream's flow-control window fills up long before this.
        for _ in range(200):
            for event_id in events:
                await play_relay(relay_store, event_id)
        await wait_until(lambda: _contains_ids(got, set(events)), what="the reader's updates")
        reader.cancel()
        stuck.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _watchers(app: App, n: int) -> bool:
    return app.hub.watchers >= n


async def _contains_ids(got: set[str], expected: set[str]) -> bool:
    return expected <= got
