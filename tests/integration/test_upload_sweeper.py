"""The upload sweeper against real FerretDB and MinIO: expired sessions (a short TTL) and the
multipart uploads a killed server leaves are removed; a live session's never is; several
sweepers at once disturb nothing; an UploadVideo stream is cut after UPLOAD_MAX_DURATION_S."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from tests.helpers import MiB, error_details, mp4_bytes
from tests.integration.resumable_helpers import (
    ServerProcesses,
    assert_one_video,
    metadata,
    write_messages,
)
from tests.integration.storage_checks import object_keys, pending_uploads, wait_until

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Database = AsyncDatabase[dict[str, Any]]
PART = 5 * MiB


@asynccontextmanager
async def running(settings: ServerSettings) -> AsyncIterator[tuple[App, Stub]]:
    app = await create_app(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, pb_grpc.CheckoutServiceStub(channel)
    finally:
        await app.stop(grace_s=1)


async def start_with_a_part(stub: Stub, data: bytes) -> str:
    started = await stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=metadata(data))
    )
    await stub.WriteUpload(write_messages(started.upload_id, data, 0, PART))
    return started.upload_id


async def count(database: Database, collection: str) -> int:
    return await database[collection].count_documents({})


async def test_an_expired_session_is_aborted_and_removed(
    settings: ServerSettings, s3: Minio, mongo_database: Database, bucket: str
) -> None:
    short = settings.replace(upload_session_ttl_s=2.0, upload_sweep_interval_s=0.2)
    async with running(short) as (app, stub):
        data = mp4_bytes(8 * MiB, seed=41)
        upload_id = await start_with_a_part(stub, data)
        assert await pending_uploads(s3, bucket) == 1

        async def swept() -> bool:
            return (
                await pending_uploads(s3, bucket) == 0
                and await count(mongo_database, short.mongo_upload_sessions_collection) == 0
                and await count(mongo_database, short.mongo_upload_facts_collection) == 0
            )

        await wait_until(swept, timeout_s=20, what="the expired session swept")
        for call in (
            stub.QueryUploadStatus(pb.QueryUploadStatusRequest(upload_id=upload_id)),
            stub.WriteUpload(write_messages(upload_id, data, PART, finish=True)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert error_details(caught.value)[:2] == (
                grpc.StatusCode.NOT_FOUND,
                "UPLOAD_NOT_FOUND",
            )
        assert app.sweeper is not None
        assert app.sweeper.expired_total == 1
        assert app.supervisor.failures["upload-sweeper"] == 0
    assert await object_keys(s3, bucket) == []
    assert await count(mongo_database, settings.mongo_outbox_collection) == 0


async def test_orphaned_uploads_are_aborted_but_never_a_live_sessions(
    settings: ServerSettings, s3: Minio, mongo_database: Database, bucket: str
) -> None:
    quick = settings.replace(upload_max_duration_s=1.0, upload_sweep_interval_s=0.2)
    orphan = "input/00000000-0000-4000-8000-000000000001.mp4"
    elsewhere = "output/not-an-upload.json"
    async with running(quick) as (app, stub):
        data = mp4_bytes(9 * MiB, seed=42)
        upload_id = await start_with_a_part(stub, data)
        await s3._create_multipart_upload(bucket, orphan, {})  # no session records it
        other_id = await s3._create_multipart_upload(bucket, elsewhere, {})

        async def orphan_gone() -> bool:
            return await pending_uploads(s3, bucket, orphan) == 0

        await wait_until(orphan_gone, timeout_s=20, what="the orphaned upload aborted")
        assert app.sweeper is not None
        rounds = app.sweeper.orphans_aborted_total
        assert rounds == 1
        # The live session's upload (older than the limit too) and the one outside input/
        # are still there; the session finishes.
        assert await pending_uploads(s3, bucket, elsewhere) == 1
        response = await stub.WriteUpload(write_messages(upload_id, data, PART, finish=True))
        await s3._abort_multipart_upload(bucket, elsewhere, other_id)
        await assert_one_video(s3, mongo_database, quick, response.result, data)


async def test_a_killed_servers_plain_uploads_are_swept(
    settings: ServerSettings, s3: Minio, mongo_database: Database, bucket: str, tmp_path: Path
) -> None:
    """The issue's case: a kill -9 of a server with 8 UploadVideo streams in flight left 8
    open multipart uploads under input/, with no object and no event."""
    servers = ServerProcesses(settings, tmp_path)
    try:
        victim = await servers.start()
        data = mp4_bytes(6 * MiB, seed=43)
        stalled = asyncio.Event()

        async def upload() -> AsyncIterator[pb.UploadVideoRequest]:
            yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="f.mp4"))
            for offset in range(0, len(data), 512 * 1024):
                yield pb.UploadVideoRequest(chunk=data[offset : offset + 512 * 1024])
            await stalled.wait()

        calls = [victim.stub.UploadVideo(upload()) for _ in range(8)]

        async def eight_open() -> bool:
            return await pending_uploads(s3, bucket) == 8

        await wait_until(eight_open, timeout_s=30, what="8 multipart uploads open")
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError):
                await call
        assert await pending_uploads(s3, bucket) == 8
    finally:
        await servers.close()

    quick = settings.replace(upload_max_duration_s=1.0, upload_sweep_interval_s=0.2)
    async with running(quick):

        async def none_open() -> bool:
            return await pending_uploads(s3, bucket) == 0

        await wait_until(none_open, timeout_s=20, what="the 8 uploads aborted")
    assert await object_keys(s3, bucket) == []
    assert await count(mongo_database, settings.mongo_outbox_collection) == 0


async def test_two_sweepers_at_once_sweep_everything_and_fail_nothing(
    settings: ServerSettings, s3: Minio, mongo_database: Database, bucket: str
) -> None:
    short = settings.replace(upload_session_ttl_s=2.0, upload_sweep_interval_s=0.1)
    async with running(short) as (first, stub), running(short) as (second, _):
        for seed in (44, 45, 46):
            await start_with_a_part(stub, mp4_bytes(6 * MiB, seed=seed))

        async def swept() -> bool:
            return (
                await pending_uploads(s3, bucket) == 0
                and await count(mongo_database, short.mongo_upload_facts_collection) == 0
                and await count(mongo_database, short.mongo_upload_sessions_collection) == 0
            )

        await wait_until(swept, timeout_s=20, what="three sessions swept")
        sweepers = [app.sweeper for app in (first, second) if app.sweeper is not None]
        # Both may remove the same expired session (the marker is one, removal idempotent).
        assert sum(s.expired_total for s in sweepers) >= 3
        assert first.supervisor.failures["upload-sweeper"] == 0
        assert second.supervisor.failures["upload-sweeper"] == 0


async def test_an_upload_video_stream_is_cut_after_the_longest_upload_allowed(
    settings: ServerSettings, s3: Minio, mongo_database: Database, bucket: str
) -> None:
    async with running(settings.replace(upload_max_duration_s=1.0)) as (_, stub):
        data = mp4_bytes(6 * MiB, seed=47)

        async def slow() -> AsyncIterator[pb.UploadVideoRequest]:
            yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="f.mp4"))
            for offset in range(0, len(data), MiB):
                yield pb.UploadVideoRequest(chunk=data[offset : offset + MiB])
            await asyncio.Event().wait()

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UploadVideo(slow())
        assert error_details(caught.value)[:2] == (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "UPLOAD_TOO_LONG",
        )

        async def aborted() -> bool:
            return await pending_uploads(s3, bucket) == 0

        await wait_until(aborted, what="its multipart upload aborted")
    assert await object_keys(s3, bucket) == []
    assert await count(mongo_database, settings.mongo_outbox_collection) == 0
