"""Watchers cannot be hoarded (issue 23), against the real server and FerretDB: a client
holding its share of WatchStatus streams (WATCH_MAX_WATCHERS_PER_CLIENT) is refused the next
one with a retry hint while another client uploads and watches; once the server holds
WATCH_MAX_WATCHERS streams every new one is refused until some close. Nothing is left
behind: streams that end give their places back.

The limits are small here (settings of the test's server) to keep the tests quick.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App
from tests.helpers import (
    error_details,
    error_info,
    has_cyrillic,
    mp4_bytes,
    retry_delay_s,
    wait_until,
)
from tests.integration.keyed import bearer, keyed_app, uploader_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

if TYPE_CHECKING:  # the async stub type exists only in the generated type stubs
    Stub = pb_grpc.CheckoutServiceAsyncStub

PER_CLIENT = 6
TOTAL = 10


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    return uploader_keys(tmp_path, "attacker", "other", "honest")


@pytest.fixture
async def watched(settings: ServerSettings, keys: dict[str, str]) -> AsyncIterator[App]:
    async with keyed_app(
        settings,
        keys,
        watch_max_watchers=TOTAL,
        watch_max_watchers_per_client=PER_CLIENT,
    ) as app:
        yield app


async def hold_watchers(app: App, stub: Stub, key: str, count: int) -> list[Any]:
    """`count` all-event watch streams of this key, open (subscribed) on the server."""
    before = app.hub.watchers
    calls = [stub.WatchStatus(pb.WatchStatusRequest(), metadata=bearer(key)) for _ in range(count)]
    await wait_until(lambda: app.hub.watchers == before + count, what=f"{count} watchers")
    return calls


async def refused(call: Any) -> tuple[str, dict[str, str], float]:
    """(reason, ErrorInfo metadata, retry hint) of a watch refused RESOURCE_EXHAUSTED, with a
    Russian message, before its first update."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    code, reason, message = error_details(caught.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    assert has_cyrillic(message), message
    return reason, dict(error_info(caught.value)[1].metadata), retry_delay_s(caught.value)


async def honest_watch(stub: Stub, key: str) -> pb.StatusUpdate:
    """Upload a small video and watch its event: the first update, its current status."""
    messages = [
        pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="ok.mp4")),
        pb.UploadVideoRequest(chunk=mp4_bytes(5000)),
    ]
    uploaded = await stub.UploadVideo(iter(messages), metadata=bearer(key), timeout=20)
    watch = stub.WatchStatus(
        pb.WatchStatusRequest(event_id=uploaded.event_id), metadata=bearer(key), timeout=20
    )
    try:
        first = await watch.read()
    finally:
        watch.cancel()
    assert isinstance(first, pb.StatusUpdate), first
    assert (first.event_id, first.heartbeat) == (uploaded.event_id, False)
    return first


async def test_a_client_past_its_share_of_watchers_is_refused_while_another_watches(
    watched: App, keys: dict[str, str]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{watched.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        held = await hold_watchers(watched, stub, keys["attacker"], PER_CLIENT)
        # One more of the attacker's, all events or one event: refused, never subscribed.
        for request in (pb.WatchStatusRequest(), pb.WatchStatusRequest(event_id=str(uuid.uuid4()))):
            reason, metadata, hint = await refused(
                stub.WatchStatus(request, metadata=bearer(keys["attacker"]))
            )
            assert (reason, metadata) == ("TOO_MANY_CLIENT_WATCHERS", {"limit": str(PER_CLIENT)})
            assert hint > 0
        assert watched.hub.watchers == PER_CLIENT
        # Another client uploads and watches meanwhile.
        await honest_watch(stub, keys["honest"])
        for call in held:
            call.cancel()
        await wait_until(lambda: watched.hub.watchers == 0, what="the streams' places back")
        # The attacker's share is whole again once its streams have ended.
        again = await hold_watchers(watched, stub, keys["attacker"], PER_CLIENT)
        for call in again:
            call.cancel()
    assert watched.hub.refusals == {"TOO_MANY_CLIENT_WATCHERS": 2}


async def test_past_the_servers_watchers_new_ones_wait_for_places(
    watched: App, keys: dict[str, str]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{watched.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        attacker = await hold_watchers(watched, stub, keys["attacker"], PER_CLIENT)
        other = await hold_watchers(watched, stub, keys["other"], TOTAL - PER_CLIENT)
        reason, metadata, hint = await refused(
            stub.WatchStatus(pb.WatchStatusRequest(), metadata=bearer(keys["honest"]))
        )
        assert (reason, metadata) == ("TOO_MANY_WATCHERS", {"limit": str(TOTAL)})
        assert hint > 0
        # Unary calls and uploads are not watchers: they go through.
        uploaded = await stub.UploadVideo(
            iter(
                [
                    pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="ok.mp4")),
                    pb.UploadVideoRequest(chunk=mp4_bytes(5000)),
                ]
            ),
            metadata=bearer(keys["honest"]),
            timeout=20,
        )
        assert uploaded.event_id
        for call in other:
            call.cancel()
        await wait_until(lambda: watched.hub.watchers == PER_CLIENT, what="places freed")
        await honest_watch(stub, keys["honest"])
        for call in attacker:
            call.cancel()
        await wait_until(lambda: watched.hub.watchers == 0, what="every place back")
    assert watched.hub.refusals == {"TOO_MANY_WATCHERS": 1}
