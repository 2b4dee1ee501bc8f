"""Resumable sessions with authentication on: the upload permission, sessions scoped to the
client that started them (another uploader's calls are NOT_FOUND), idempotency keys scoped
to their owner, and the finished event owned by the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.auth.keys import entry, new_key
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import create_app
from tests.helpers import MiB, error_details, mp4_bytes
from tests.integration.resumable_helpers import assert_one_video, metadata, write_messages

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Database = AsyncDatabase[dict[str, Any]]
PART = 5 * MiB
KEYS = {"camera-a": new_key(), "camera-b": new_key(), "dashboard": new_key()}


def bearer(client: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {KEYS[client]}"),)


@pytest.fixture
async def stub(settings: ServerSettings, tmp_path: Path) -> AsyncIterator[Stub]:
    path = tmp_path / "api-keys.toml"
    path.write_text(
        entry("camera-a", "uploader", KEYS["camera-a"])
        + entry("camera-b", "uploader", KEYS["camera-b"])
        + entry("dashboard", "reader", KEYS["dashboard"])
    )
    app = await create_app(
        settings.replace(auth_enabled=True, auth_keys_file=str(path), upload_rate_per_minute=0)
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield pb_grpc.CheckoutServiceStub(channel)
    finally:
        await app.stop(grace_s=1)


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code, reason, _ = error_details(caught.value)
    return code, reason


async def test_a_session_belongs_to_the_client_that_started_it(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(8 * MiB, seed=71)
    start = pb.StartResumableUploadRequest(metadata=metadata(data, idempotency_key="k-1"))
    started = await stub.StartResumableUpload(start, metadata=bearer("camera-a"))
    upload_id = started.upload_id
    await stub.WriteUpload(write_messages(upload_id, data, 0, PART), metadata=bearer("camera-a"))

    not_found = (grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND")
    query = pb.QueryUploadStatusRequest(upload_id=upload_id)
    assert await refused(stub.QueryUploadStatus(query, metadata=bearer("camera-b"))) == not_found
    assert (
        await refused(
            stub.WriteUpload(
                write_messages(upload_id, data, PART, finish=True), metadata=bearer("camera-b")
            )
        )
        == not_found
    )
    cancel = pb.CancelUploadRequest(upload_id=upload_id)
    assert await refused(stub.CancelUpload(cancel, metadata=bearer("camera-b"))) == not_found
    # The same key from another client is another client's session.
    other = await stub.StartResumableUpload(start, metadata=bearer("camera-b"))
    assert other.upload_id != upload_id
    await stub.CancelUpload(
        pb.CancelUploadRequest(upload_id=other.upload_id), metadata=bearer("camera-b")
    )
    # A reader may not upload, and nobody without a key.
    assert await refused(stub.StartResumableUpload(start, metadata=bearer("dashboard"))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    assert await refused(stub.QueryUploadStatus(query)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )

    response = await stub.WriteUpload(
        write_messages(upload_id, data, PART, finish=True), metadata=bearer("camera-a")
    )
    await assert_one_video(s3, mongo_database, settings, response.result, data)
    record = await mongo_database[settings.mongo_status_collection].find_one(
        {"_id": response.result.event_id}
    )
    assert record is not None
    assert record["owner"] == "camera-a"
