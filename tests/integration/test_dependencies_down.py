"""A dependency down, against the real servers: the database stopped (degraded health,
NOT_SERVING, DATABASE_UNAVAILABLE on the status RPCs, recovery), MinIO stopped when an
upload starts (STORAGE_UNAVAILABLE, nothing left), and the limit of the abort's retries
while MinIO stays away.

Each test stops a backend, so it gets a FerretDB or MinIO of its own (`own_ferretdb`,
`own_minio` in conftest.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from devstack import FerretDB, MinIO
from tests.helpers import MiB, error_details, has_cyrillic, mp4_bytes
from tests.integration.storage_checks import object_keys, pending_uploads, wait_until

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def started(settings: ServerSettings) -> App:
    app = await create_app(settings)
    await app.start()
    return app


def upload_messages(data: bytes, **meta: Any) -> list[pb.UploadVideoRequest]:
    messages = [pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="v.mp4", **meta))]
    messages += [
        pb.UploadVideoRequest(chunk=data[i : i + 512 * 1024])
        for i in range(0, len(data), 512 * 1024)
    ]
    return messages


async def health_of(stub: Stub) -> tuple[str, dict[str, str]]:
    response = await stub.Health(pb.HealthRequest(), timeout=10)
    return response.status, dict(response.dependencies)


async def standard_health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="checkout.v1.CheckoutService"), timeout=10
    )
    return int(response.status)


async def expect(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    got_code, got_reason, message = error_details(caught.value)
    assert (got_code, got_reason) == (code, reason), message
    assert has_cyrillic(message)


async def expect_stream(call: Any, code: grpc.StatusCode, reason: str) -> None:
    async def read() -> None:
        async for _ in call:
            pass

    await expect(read(), code, reason)


# --- the database down ---------------------------------------------------------------------


@pytest.fixture
async def db_down_app(settings: ServerSettings, own_ferretdb: FerretDB) -> AsyncIterator[App]:
    app = await started(
        settings.replace(mongo_uri=own_ferretdb.uri, mongo_timeout_ms=1_000, health_interval_s=0.2)
    )
    yield app
    await app.stop(grace_s=1)


async def test_database_down_degrades_health_and_status_rpcs_then_recovers(
    db_down_app: App, own_ferretdb: FerretDB, s3: Minio, bucket: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{db_down_app.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        uploaded = await stub.UploadVideo(iter(upload_messages(mp4_bytes(2000))), timeout=30)
        assert await health_of(stub) == ("ok", {"storage": "ok", "database": "ok"})
        assert await standard_health(channel) == health_pb2.HealthCheckResponse.SERVING
        # A watch of the standard health service (as load balancers keep one) sees the change.
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="checkout.v1.CheckoutService"), timeout=60
        )
        changes = aiter(watch)
        assert (await anext(changes)).status == health_pb2.HealthCheckResponse.SERVING

        await asyncio.to_thread(own_ferretdb.stop)

        async def degraded() -> bool:
            status, dependencies = await health_of(stub)
            return status == "degraded" and dependencies["database"] != "ok"

        await wait_until(degraded, timeout_s=30, what="health to report the database down")
        _, dependencies = await health_of(stub)
        assert dependencies["storage"] == "ok"
        assert dependencies["database"] in {"database_unavailable", "database_timeout", "timeout"}
        assert await standard_health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        changed = await asyncio.wait_for(anext(changes), 10)
        assert changed.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()

        unavailable = (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        event_id = uploaded.event_id
        await expect(stub.GetStatus(pb.GetStatusRequest(event_id=event_id)), *unavailable)
        await expect(stub.ListStatuses(pb.ListStatusesRequest()), *unavailable)
        await expect(stub.GetResult(pb.GetResultRequest(event_id=event_id)), *unavailable)
        await expect(
            stub.CreateRequest(pb.CreateRequestRequest(video_id=uploaded.video_id)), *unavailable
        )
        await expect_stream(
            stub.WatchStatus(pb.WatchStatusRequest(event_id=event_id)), *unavailable
        )
        # An upload with a key is refused at its look-up, before anything is stored.
        await expect(
            stub.UploadVideo(iter(upload_messages(mp4_bytes(3000), idempotency_key="k-1"))),
            *unavailable,
        )
        assert await object_keys(s3, bucket) == [uploaded.object_key]

        await asyncio.to_thread(own_ferretdb.start)

        async def recovered() -> bool:
            return (await health_of(stub))[0] == "ok"

        await wait_until(recovered, timeout_s=30, what="health to recover")
        assert await standard_health(channel) == health_pb2.HealthCheckResponse.SERVING
        got = await stub.GetStatus(pb.GetStatusRequest(event_id=event_id), timeout=10)
        assert got.operation.status == "new"
        listed = await stub.ListStatuses(pb.ListStatusesRequest(), timeout=10)
        assert [op.event_id for op in listed.operations] == [event_id]


# --- MinIO down ------------------------------------------------------------------------------


def s3_client(server: MinIO) -> Minio:
    return Minio(server.endpoint, access_key="minioadmin", secret_key="minioadmin", secure=False)


async def count_events(settings: ServerSettings) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    try:
        database = client[settings.mongo_db]
        return await database[settings.mongo_outbox_collection].count_documents(
            {}
        ) + await database[settings.mongo_status_collection].count_documents({})
    finally:
        await client.close()


@pytest.mark.parametrize("size", [2000, 12 * MiB], ids=["one-part", "multipart"])
async def test_storage_down_when_an_upload_starts(
    settings: ServerSettings, own_minio: MinIO, size: int
) -> None:
    settings = settings.replace(minio_endpoint=own_minio.endpoint, health_interval_s=0.2)
    app = await started(settings)
    s3 = s3_client(own_minio)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub: Stub = pb_grpc.CheckoutServiceStub(channel)
            await asyncio.to_thread(own_minio.kill)

            await expect(
                stub.UploadVideo(iter(upload_messages(mp4_bytes(size))), timeout=60),
                grpc.StatusCode.UNAVAILABLE,
                "STORAGE_UNAVAILABLE",
            )

            async def degraded() -> bool:
                status, dependencies = await health_of(stub)
                return status == "degraded" and dependencies["storage"] != "ok"

            await wait_until(degraded, timeout_s=30, what="health to report storage down")
            assert (await health_of(stub))[1]["database"] == "ok"

            await asyncio.to_thread(own_minio.start)
            await wait_until(lambda: _pending_is(s3, settings.default_bucket, 0), what="aborted")
            assert await object_keys(s3, settings.default_bucket) == []
            assert await count_events(settings) == 0
            # Back to normal: the same upload now succeeds.
            done = await stub.UploadVideo(iter(upload_messages(mp4_bytes(size))), timeout=60)
            assert done.size_bytes == size
    finally:
        await app.stop(grace_s=1)
        await s3.close_session()  # type: ignore[no-untyped-call]


async def _pending_is(s3: Minio, bucket: str, count: int) -> bool:
    return await pending_uploads(s3, bucket) == count


async def test_the_abort_gives_up_after_storage_abort_retry_s(
    settings: ServerSettings, own_minio: MinIO, caplog: pytest.LogCaptureFixture
) -> None:
    # MinIO dies mid-upload with a multipart upload open and stays away longer than the
    # abort retries: the cleanup ends (it does not retry forever), and the open upload is
    # left to MinIO's own expiry of stale multipart uploads (docs/uploads.md).
    retry_s = 3.0
    settings = settings.replace(minio_endpoint=own_minio.endpoint, storage_abort_retry_s=retry_s)
    app = await started(settings)
    s3 = s3_client(own_minio)
    bucket = settings.default_bucket
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub: Stub = pb_grpc.CheckoutServiceStub(channel)
            gate = asyncio.Event()
            data = mp4_bytes(24 * MiB)

            async def stream() -> AsyncIterator[pb.UploadVideoRequest]:
                for message in upload_messages(data[: 11 * MiB]):
                    yield message
                await gate.wait()
                for message in upload_messages(data[11 * MiB :])[1:]:
                    yield message

            call = stub.UploadVideo(stream())
            await wait_until(lambda: _pending_is(s3, bucket, 1), what="a multipart upload")
            await asyncio.to_thread(own_minio.kill)
            killed = time.monotonic()
            gate.set()
            with caplog.at_level(logging.WARNING):
                await expect(call, grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")

                async def cleanups_done() -> bool:
                    return not app.pipeline._cleanups

                await wait_until(cleanups_done, timeout_s=retry_s + 30, what="the cleanup")
            gave_up_after_s = time.monotonic() - killed
            # It retried (with backoff) and then gave up within the limit: no retry is
            # started that would end past STORAGE_ABORT_RETRY_S.
            messages = [r.getMessage() for r in caplog.records]
            assert sum("abort of" in m and "retrying" in m for m in messages) >= 2, messages
            assert any(m.startswith("giving up abort of") for m in messages), messages
            assert gave_up_after_s < retry_s + 10, gave_up_after_s
            attempts = len(caplog.records)
            await asyncio.to_thread(own_minio.start)
            # Nothing tries again after the limit (MinIO's expiry of stale uploads is left),
            # and nothing was stored: no object, no event.
            assert not app.pipeline._cleanups
            assert not [r for r in caplog.records[attempts:] if "abort of" in r.getMessage()]
            assert await object_keys(s3, bucket) == []
            assert await count_events(settings) == 0
    finally:
        await app.stop(grace_s=1)
        await s3.close_session()  # type: ignore[no-untyped-call]


async def test_reads_work_while_storage_is_down_except_results(
    settings: ServerSettings, own_minio: MinIO
) -> None:
    settings = settings.replace(minio_endpoint=own_minio.endpoint)
    app = await started(settings)
    s3 = s3_client(own_minio)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub: Stub = pb_grpc.CheckoutServiceStub(channel)
            uploaded = await stub.UploadVideo(iter(upload_messages(mp4_bytes(2000))), timeout=30)
            raw = b'{"objects": []}'
            await s3.put_object(
                settings.default_bucket,
                f"output/{uploaded.video_id}.json",
                io.BytesIO(raw),
                len(raw),
            )
            await asyncio.to_thread(own_minio.kill)
            # Statuses come from the database alone.
            listed = await stub.ListStatuses(pb.ListStatusesRequest(), timeout=30)
            assert [op.event_id for op in listed.operations] == [uploaded.event_id]
            # The result needs storage: refused with the storage's own reason.
            await expect(
                stub.GetResult(pb.GetResultRequest(event_id=uploaded.event_id), timeout=60),
                grpc.StatusCode.UNAVAILABLE,
                "STORAGE_UNAVAILABLE",
            )
    finally:
        await app.stop(grace_s=1)
        await s3.close_session()  # type: ignore[no-untyped-call]
