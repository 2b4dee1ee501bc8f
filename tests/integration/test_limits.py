"""The transport limits of the gRPC server, against a real server: the message size and
keepalive enforcement (the other limits: the concurrent-upload limit in test_metrics.py, the
per-client upload rate in test_auth.py, the video size in test_upload.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.wiring.server import MAX_MESSAGE_BYTES, App
from tests.helpers import mp4_bytes
from tests.integration.storage_checks import object_keys, pending_uploads

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

if TYPE_CHECKING:  # the async stub type exists only in the generated type stubs
    Stub = pb_grpc.CheckoutServiceAsyncStub


async def test_a_message_over_the_maximum_size_is_refused_and_stores_nothing(
    app: App, s3: Minio, bucket: str, outbox_collection: AsyncCollection[dict[str, Any]]
) -> None:
    # The client may send what it likes; the server's limit is what refuses.
    options = [("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        messages = [
            pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="big.mp4")),
            pb.UploadVideoRequest(chunk=mp4_bytes(MAX_MESSAGE_BYTES + 1)),
        ]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UploadVideo(iter(messages))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A chunk just under the limit is accepted by the same server.
        fits = [
            messages[0],
            pb.UploadVideoRequest(chunk=mp4_bytes(MAX_MESSAGE_BYTES - 1024)),
        ]
        stored = await stub.UploadVideo(iter(fits))
    assert await object_keys(s3, bucket) == [stored.object_key]
    assert await pending_uploads(s3, bucket) == 0
    assert await outbox_collection.count_documents({}) == 1


async def test_a_client_that_pings_too_often_is_sent_away(app: App) -> None:
    # Pings every second on an idle stream; the server allows one per 10 s without data and
    # answers the third strike with GOAWAY ENHANCE_YOUR_CALM ("too_many_pings").
    options = [
        ("grpc.keepalive_time_ms", 1_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        watch = stub.WatchStatus(pb.WatchStatusRequest())  # idle: heartbeats every 15 s
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "Too many pings"
