"""The sweep of complete objects without an event against real MinIO and FerretDB: the adapters'
page listing and "which videos have events / sessions" queries, the sweep's decisions over
them (an unreachable database keeps everything), and a running server that removes a killed
upload's leftover while the videos with events stay, counted in its metrics."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.adapters.minio_storage import MinioStorage
from checkout_server.adapters.mongo_outbox import MongoOutbox
from checkout_server.adapters.mongo_upload_sessions import MongoUploadSessions
from checkout_server.config import ServerSettings
from checkout_server.domain import EventStatus, OutboxEvent, input_object_key
from checkout_server.errors import DatabaseUnavailable
from checkout_server.ports import UploadSession
from checkout_server.upload import pipeline as pipeline_module
from checkout_server.upload.sweeper import EventlessObjects
from checkout_server.wiring.clients import minio_client, mongo_client
from checkout_server.wiring.server import create_app
from devstack import FerretDB
from tests.helpers import MiB, mp4_bytes
from tests.integration.metrics_scrape import scrape
from tests.integration.resumable_helpers import (
    ServerProcesses,
    assert_one_video,
    metadata,
    write_messages,
)
from tests.integration.storage_checks import object_keys, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

Database = AsyncDatabase[dict[str, Any]]
AGE_S = 3600.0
FAST_LEASE = {"UPLOAD_LEASE_TTL_S": "3", "UPLOAD_CLOCK_SKEW_S": "0.5"}


def later() -> datetime:
    """The sweep's clock in these tests: every object just written is older than AGE_S."""
    return datetime.now(UTC) + timedelta(seconds=AGE_S + 60)


@dataclass
class Adapters:
    storage: MinioStorage
    outbox: MongoOutbox
    sessions: MongoUploadSessions


@pytest.fixture
async def adapters(settings: ServerSettings) -> AsyncIterator[Adapters]:
    minio = minio_client(settings)
    mongo = mongo_client(settings, appname="test-orphans")
    database = mongo[settings.mongo_db]
    found = Adapters(
        storage=MinioStorage(minio),
        outbox=MongoOutbox(
            database[settings.mongo_outbox_collection], database[settings.mongo_status_collection]
        ),
        sessions=MongoUploadSessions(
            database[settings.mongo_upload_sessions_collection],
            database[settings.mongo_upload_facts_collection],
        ),
    )
    await found.storage.ensure_bucket(settings.default_bucket)
    await found.outbox.ensure_indexes()  # with the new `video` indexes, on FerretDB
    await found.sessions.ensure_indexes()
    yield found
    await mongo.close()
    await minio.close_session()  # type: ignore[no-untyped-call]


async def put(s3: Minio, bucket: str, video_id: str, size: int = 3) -> str:
    key = input_object_key(video_id)
    await s3.put_object(bucket, key, io.BytesIO(b"v" * size), size)
    return key


def event(video_id: str, bucket: str, *, event_id: str = "") -> OutboxEvent:
    now = datetime.now(UTC)
    return OutboxEvent(
        event_id=event_id or video_id,
        video_id=video_id,
        bucket=bucket,
        object_key=input_object_key(video_id),
        filename="f.mp4",
        content_type="video/mp4",
        size_bytes=3,
        sha256="",
        status=EventStatus.NEW,
        created_at=now,
        updated_at=now,
    )


def session(video_id: str, bucket: str) -> UploadSession:
    now = datetime.now(UTC)
    return UploadSession(
        upload_id=str(uuid.uuid4()),
        video_id=video_id,
        bucket=bucket,
        object_key=input_object_key(video_id),
        filename="f.mp4",
        size_bytes=3,
        sha256="",
        crc32c=None,
        idempotency_key="",
        owner="",
        part_bytes=5 * MiB,
        created_at=now,
        expires_at=now + timedelta(hours=12),
    )


def ids(count: int) -> list[str]:
    return sorted(str(uuid.uuid4()) for _ in range(count))


async def test_list_page_pages_through_minio_in_key_order(
    adapters: Adapters, s3: Minio, bucket: str
) -> None:
    videos = ids(5)
    for video_id in videos:
        await put(s3, bucket, video_id, size=7)
    await s3.put_object(bucket, "output/x.json", io.BytesIO(b"{}"), 2)  # not under input/
    keys = [input_object_key(v) for v in videos]
    first = await adapters.storage.list_page(bucket, "input/", start_after="", limit=2)
    assert [o.key for o in first] == keys[:2]
    assert {o.size_bytes for o in first} == {7}
    assert all(datetime.now(UTC) - o.last_modified < timedelta(minutes=5) for o in first)
    second = await adapters.storage.list_page(bucket, "input/", start_after=keys[1], limit=2)
    assert [o.key for o in second] == keys[2:4]
    last = await adapters.storage.list_page(bucket, "input/", start_after=keys[3], limit=2)
    assert [o.key for o in last] == keys[4:]
    assert await adapters.storage.list_page(bucket, "input/", start_after=keys[4], limit=2) == []


async def test_videos_with_events_finds_uploads_re_requests_and_the_seeds_events(
    adapters: Adapters, settings: ServerSettings, mongo_database: Database, bucket: str
) -> None:
    uploaded, re_requested, seeded, record_only, none = ids(5)
    await adapters.outbox.add(event(uploaded, bucket))
    # A re-request's event: its own id, the video's id in `video_id` (its upload's is gone).
    await adapters.outbox.add(event(re_requested, bucket, event_id=str(uuid.uuid4())))
    # The seed's outbox message: `_id` is the video id, no top-level `video_id`.
    await mongo_database[settings.mongo_outbox_collection].insert_one(
        {"_id": seeded, "payload": {"video_id": seeded}, "status": "new"}
    )
    # A status record whose outbox message was swept already.
    await mongo_database[settings.mongo_status_collection].insert_one(
        {"_id": record_only, "video_id": record_only, "status": "sent"}
    )
    asked = [uploaded, re_requested, seeded, record_only, none]
    found = await adapters.outbox.videos_with_events(asked)
    assert found == {uploaded, re_requested, seeded, record_only}


async def test_videos_with_sessions_finds_stored_sessions_only(
    adapters: Adapters, bucket: str
) -> None:
    live, none = ids(2)
    await adapters.sessions.create(session(live, bucket))
    assert await adapters.sessions.videos_with_sessions([live, none]) == {live}
    assert await adapters.sessions.videos_with_sessions([]) == set()


async def test_the_sweep_removes_only_old_objects_nothing_names(
    adapters: Adapters, s3: Minio, bucket: str
) -> None:
    with_event, re_requested, with_session, orphan, another = ids(5)
    for video_id in (with_event, re_requested, with_session, orphan, another):
        await put(s3, bucket, video_id)
    await adapters.outbox.add(event(with_event, bucket))
    await adapters.outbox.add(event(re_requested, bucket, event_id=str(uuid.uuid4())))
    await adapters.sessions.create(session(with_session, bucket))
    kept = sorted(input_object_key(v) for v in (with_event, re_requested, with_session))

    # Young (the real clock): nothing goes.
    young = EventlessObjects(
        storage=adapters.storage,
        outbox=adapters.outbox,
        sessions=adapters.sessions,
        min_age_s=AGE_S,
    )
    await young.sweep(bucket)
    assert len(await object_keys(s3, bucket)) == 5

    # Old, two keys a page: three rounds visit every object once.
    sweep = EventlessObjects(
        storage=adapters.storage,
        outbox=adapters.outbox,
        sessions=adapters.sessions,
        min_age_s=AGE_S,
        page=2,
        clock=later,
    )
    for _ in range(3):
        await sweep.sweep(bucket)
    assert sorted(await object_keys(s3, bucket)) == kept
    assert sweep.removed_total == 2


async def test_a_database_that_does_not_answer_keeps_every_object(
    settings: ServerSettings,
    adapters: Adapters,
    s3: Minio,
    bucket: str,
    own_ferretdb: FerretDB,
) -> None:
    orphan = await put(s3, bucket, str(uuid.uuid4()))
    down = settings.replace(mongo_uri=own_ferretdb.uri, mongo_timeout_ms=1_000)
    mongo = mongo_client(down, appname="test-orphans-down")
    database = mongo[down.mongo_db]
    sweep = EventlessObjects(
        storage=adapters.storage,
        outbox=MongoOutbox(
            database[down.mongo_outbox_collection], database[down.mongo_status_collection]
        ),
        sessions=adapters.sessions,
        min_age_s=AGE_S,
        clock=later,
    )
    try:
        await database.command("ping")
        await asyncio.to_thread(own_ferretdb.stop)
        with pytest.raises(DatabaseUnavailable):
            await sweep.sweep(bucket)
    finally:
        await mongo.close()
    assert await object_keys(s3, bucket) == [orphan]
    assert sweep.removed_total == 0


async def test_a_running_server_removes_an_object_without_event_and_counts_it(
    settings: ServerSettings, s3: Minio, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smallest age the settings allow here: a 1 s lost-insert check and 0.5 s database
    timeouts (9 + 1 + 10 s)."""
    monkeypatch.setattr(pipeline_module, "LOST_INSERT_CHECK_S", 1.0)
    quick = settings.replace(
        mongo_timeout_ms=500,
        upload_orphan_object_age_s=20.0,
        upload_sweep_interval_s=0.5,
        metrics_addr="127.0.0.1:0",
    )
    app = await create_app(quick)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            data = mp4_bytes(64 * 1024, seed=51)
            messages = [
                pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="f.mp4")),
                pb.UploadVideoRequest(chunk=data),
            ]
            uploaded = await stub.UploadVideo(iter(messages))
        orphan = await put(s3, bucket, str(uuid.uuid4()), size=1234)

        async def orphan_gone() -> bool:
            return orphan not in await object_keys(s3, bucket)

        await wait_until(orphan_gone, timeout_s=60, what="the event-less object removed")
        assert await object_keys(s3, bucket) == [input_object_key(uploaded.event_id)]
        assert app.sweeper is not None
        assert app.sweeper.orphan_objects_removed_total == 1
        assert app.supervisor.failures["upload-sweeper"] == 0
        samples = await scrape(app.metrics.port if app.metrics else 0)
        assert samples["checkout_orphan_objects_removed_total"] == 1
        assert samples["checkout_orphan_multipart_uploads_aborted_total"] == 0
        assert samples["checkout_upload_sessions_expired_total"] == 0
    finally:
        await app.stop(grace_s=1.0)


async def test_a_killed_sessions_complete_object_outlives_the_age_and_is_finished(
    settings: ServerSettings,
    s3: Minio,
    mongo_database: Database,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server killed after completing a resumable session's object, before its event: the
    object is older than the age when the next server sweeps, and stays (its session names
    it); the client's retry then finishes the upload with its one event."""
    data = mp4_bytes(12 * MiB + 7, seed=62)
    servers = ServerProcesses(settings, tmp_path)
    try:
        doomed = await servers.start(env={**FAST_LEASE, "UPLOAD_FAILPOINT": "after_complete"})
        started = await doomed.stub.StartResumableUpload(
            pb.StartResumableUploadRequest(metadata=metadata(data))
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await doomed.stub.WriteUpload(write_messages(started.upload_id, data, 0, finish=True))
        assert await doomed.process.wait() == -9
    finally:
        await servers.close()
    [completed] = await object_keys(s3, bucket)
    probe = await put(s3, bucket, str(uuid.uuid4()))  # no event, no session: swept

    monkeypatch.setattr(pipeline_module, "LOST_INSERT_CHECK_S", 1.0)
    quick = settings.replace(
        mongo_timeout_ms=500,
        upload_orphan_object_age_s=20.0,
        upload_sweep_interval_s=0.5,
        upload_lease_ttl_s=3.0,
        upload_clock_skew_s=0.5,
    )
    app = await create_app(quick)
    await app.start()
    try:

        async def probe_gone() -> bool:
            return probe not in await object_keys(s3, bucket)

        await wait_until(probe_gone, timeout_s=60, what="the probe swept")
        assert await object_keys(s3, bucket) == [completed]  # as old as the probe, and kept
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            state = await stub.QueryUploadStatus(
                pb.QueryUploadStatusRequest(upload_id=started.upload_id)
            )
            assert state.persisted_size == len(data)
            response = await stub.WriteUpload(
                write_messages(started.upload_id, data, len(data), finish=True)
            )
        await assert_one_video(s3, mongo_database, quick, response.result, data)
    finally:
        await app.stop(grace_s=1.0)
