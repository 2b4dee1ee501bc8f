"""The server's Prometheus metrics after real calls, and the concurrent-upload limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from miniopy_async.api import Minio
from prometheus_client.parser import text_string_to_metric_families
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from tests.helpers import MiB, error_details, has_cyrillic, mp4_bytes, retry_delay_s
from tests.integration.metrics_scrape import metrics_text
from tests.integration.storage_checks import object_keys, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHUNK = 512 * 1024
SERVICE = "checkout.v1.CheckoutService"
REFUSED_TOO_MANY = frozenset({("reason", "TOO_MANY_UPLOADS")})


def messages(data: bytes) -> Iterator[pb.UploadVideoRequest]:
    yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="clip.mp4"))
    for start in range(0, len(data), CHUNK):
        yield pb.UploadVideoRequest(chunk=data[start : start + CHUNK])


@pytest.fixture
async def metered(settings: ServerSettings) -> AsyncIterator[App]:
    app = await create_app(settings.replace(metrics_addr="127.0.0.1:0", upload_max_concurrent=1))
    await app.start()
    yield app
    await app.stop(grace_s=1.0)


async def scrape(app: App) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the server's /metrics: (name, labels) -> value."""
    assert app.metrics is not None
    text = await asyncio.to_thread(metrics_text, app.metrics.port)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def grpc_labels(method: str, rpc_type: str, **more: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": rpc_type, **more}.items()
    )


async def test_metrics_after_an_upload(metered: App) -> None:
    data = mp4_bytes(3 * MiB + 5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        response = await stub.UploadVideo(messages(data))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetStatus(pb.GetStatusRequest(event_id="not-a-uuid"))

        samples = await scrape(metered)

    upload = grpc_labels("UploadVideo", "client_stream")
    assert samples[("grpc_server_started_total", upload)] == 1
    assert samples[("grpc_server_handled_total", upload | {("grpc_code", "OK")})] == 1
    assert samples[("grpc_server_handling_seconds_count", upload)] == 1
    assert samples[("grpc_server_handling_seconds_sum", upload)] > 0
    bad = grpc_labels("GetStatus", "unary", grpc_code="INVALID_ARGUMENT")
    assert samples[("grpc_server_handled_total", bad)] == 1
    none: frozenset[tuple[str, str]] = frozenset()
    assert samples[("checkout_upload_bytes_total", none)] == len(data)
    assert samples[("checkout_uploads_in_flight", none)] == 0
    assert samples[("checkout_uploads_refused_total", REFUSED_TOO_MANY)] == 0
    assert samples[("checkout_upload_memory_budget_bytes_used", none)] == 0
    assert samples[("checkout_watchers", none)] == 0
    for reason in ("TOO_MANY_WATCHERS", "TOO_MANY_CLIENT_WATCHERS"):
        assert samples[("checkout_watchers_refused_total", frozenset({("reason", reason)}))] == 0
    for reason in ("REQUEST_RATE_LIMITED", "LIST_RATE_LIMITED"):
        assert samples[("checkout_calls_rate_limited_total", frozenset({("reason", reason)}))] == 0
    assert samples[("checkout_wake_ups_refused_total", none)] == 0  # WAKE_SECRET is set
    assert response.event_id


async def test_an_upload_beyond_the_limit_is_refused_with_a_retry_hint(
    metered: App, s3: Minio, outbox_collection: AsyncCollection[dict[str, Any]]
) -> None:
    bucket = metered.settings.default_bucket
    gate, first_sent = asyncio.Event(), asyncio.Event()
    data = mp4_bytes(2 * MiB)

    async def held_open() -> AsyncIterator[pb.UploadVideoRequest]:
        yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="first.mp4"))
        yield pb.UploadVideoRequest(chunk=data[:CHUNK])
        first_sent.set()
        await gate.wait()
        for start in range(CHUNK, len(data), CHUNK):
            yield pb.UploadVideoRequest(chunk=data[start : start + CHUNK])

    async with grpc.aio.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        first = stub.UploadVideo(held_open())
        await first_sent.wait()

        async def streaming() -> bool:  # the first upload holds the one slot (limit 1)
            return metered.pipeline.in_flight == 1

        await wait_until(streaming, what="the first upload streaming")

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UploadVideo(messages(mp4_bytes(1 * MiB, seed=2)))

        code, reason, message = error_details(caught.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_UPLOADS")
        assert has_cyrillic(message)
        assert retry_delay_s(caught.value) > 0
        # Nothing of the refused upload was stored; the first one goes on.
        assert await object_keys(s3, bucket) == []
        assert await outbox_collection.count_documents({}) == 0
        refused = await scrape(metered)
        assert refused[("checkout_uploads_refused_total", REFUSED_TOO_MANY)] == 1
        assert refused[("checkout_uploads_in_flight", frozenset())] == 1

        gate.set()
        response = await first
    assert await object_keys(s3, bucket) == [response.object_key]
    assert metered.pipeline.in_flight == 0
