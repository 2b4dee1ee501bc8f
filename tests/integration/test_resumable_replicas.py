"""Resumable sessions across real server processes: a resume on another replica, several
replicas racing for one session, and a zombie writer (a server paused past its lease while
writing a part). Each ends with the file stored once, byte for byte, one outbox event and no
multipart upload left open."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_server.config import ServerSettings
from tests.helpers import MiB, error_details, mp4_bytes
from tests.integration.resumable_helpers import (
    ServerProcesses,
    assert_nothing_left,
    assert_one_video,
    cut_write,
    metadata,
    write_list,
    write_messages,
)
from tests.integration.storage_checks import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Database = AsyncDatabase[dict[str, Any]]
PART = 5 * MiB  # UPLOAD_PART_BYTES of tests/integration/processes.server_env
RETRIABLE = {grpc.StatusCode.ABORTED}


@pytest.fixture
async def servers(settings: ServerSettings, tmp_path: Path) -> AsyncIterator[ServerProcesses]:
    processes = ServerProcesses(settings, tmp_path)
    yield processes
    await processes.close()


async def test_a_session_cut_on_one_server_finishes_on_another(
    servers: ServerProcesses, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    first, second = await servers.start(), await servers.start()
    data = mp4_bytes(17 * MiB, seed=21)
    started = await first.stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=metadata(data))
    )
    await cut_write(first.stub, started.upload_id, data, 0, 12 * MiB, part_bytes=PART)

    # The second server knows the session from the database alone; it never saw the first
    # bytes, so it reads the object back for its SHA-256.
    query = pb.QueryUploadStatusRequest(upload_id=started.upload_id)
    assert (await second.stub.QueryUploadStatus(query)).persisted_size == 2 * PART
    response = await second.stub.WriteUpload(
        write_messages(started.upload_id, data, 2 * PART, finish=True)
    )
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def test_a_checksum_mismatch_found_by_reading_the_object_back_leaves_nothing(
    servers: ServerProcesses, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    """A second server finishing a session it did not see from byte 0 reads the completed
    object back for its SHA-256; when that is not the declared one, nothing stays."""
    first, second = await servers.start(), await servers.start()
    data = mp4_bytes(12 * MiB, seed=23)
    declared = pb.UploadMetadata(filename="clip.mp4", size_bytes=len(data), sha256="0" * 64)
    started = await first.stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=declared)
    )
    await cut_write(first.stub, started.upload_id, data, 0, 7 * MiB, part_bytes=PART)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.stub.WriteUpload(write_messages(started.upload_id, data, PART, finish=True))
    assert error_details(caught.value)[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CHECKSUM_MISMATCH",
    )
    await assert_nothing_left(s3, mongo_database, settings, settings.default_bucket)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await second.stub.QueryUploadStatus(
            pb.QueryUploadStatusRequest(upload_id=started.upload_id)
        )
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


async def test_a_session_resumes_after_its_server_is_killed(
    servers: ServerProcesses, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    server = await servers.start()
    data = mp4_bytes(13 * MiB, seed=22)
    started = await server.stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=metadata(data))
    )
    await cut_write(server.stub, started.upload_id, data, 0, 11 * MiB, part_bytes=PART)
    server.process.kill()
    await server.process.wait()

    again = await servers.start(port=server.port)
    # The dead server's lease was never released: the new one waits for it to run out.
    response = await again.stub.WriteUpload(
        write_messages(started.upload_id, data, 2 * PART, finish=True)
    )
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def test_five_concurrent_resumes_on_two_servers_store_the_file_once(
    servers: ServerProcesses, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    replicas = [await servers.start(), await servers.start()]
    data = mp4_bytes(23 * MiB, seed=23)
    started = await replicas[0].stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=metadata(data))
    )
    await cut_write(replicas[0].stub, started.upload_id, data, 0, 7 * MiB, part_bytes=PART)

    async def resume(n: int) -> pb.WriteUploadResponse | grpc.aio.AioRpcError:
        stub = replicas[n % 2].stub
        query = pb.QueryUploadStatusRequest(upload_id=started.upload_id)
        offset = (await stub.QueryUploadStatus(query)).persisted_size
        try:
            return await stub.WriteUpload(
                write_messages(started.upload_id, data, offset, finish=True)
            )
        except grpc.aio.AioRpcError as exc:
            return exc

    outcomes = await asyncio.gather(*(resume(n) for n in range(5)))

    results = [o.result for o in outcomes if isinstance(o, pb.WriteUploadResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    for exc in refused:  # those that lost the session were told to retry
        code, reason, _ = error_details(exc)
        assert code in RETRIABLE, (code, reason)
        assert reason in {"UPLOAD_BUSY", "UPLOAD_TAKEN_OVER"}
    if not results:  # every stream gave way to a newer one: the last word is a plain resume
        results.append((await resume(0)).result)  # type: ignore[union-attr]
    assert len({r.event_id for r in results}) == 1
    await assert_one_video(s3, mongo_database, settings, results[0], data)


async def test_a_zombie_writer_paused_past_its_lease_corrupts_nothing(
    servers: ServerProcesses, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    short = {"UPLOAD_LEASE_TTL_S": "2", "UPLOAD_CLOCK_SKEW_S": "0.5", "UPLOAD_TAKEOVER_WAIT_S": "8"}
    zombie, other = await servers.start(env=short), await servers.start(env=short)
    data = mp4_bytes(16 * MiB, seed=24)
    started = await zombie.stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=metadata(data))
    )
    upload_id = started.upload_id
    await cut_write(zombie.stub, upload_id, data, 0, 6 * MiB, part_bytes=PART)

    # The zombie takes the session again and gets half way into the second part...
    half = asyncio.Event()
    rest = asyncio.Event()

    async def zombie_stream() -> AsyncIterator[pb.WriteUploadRequest]:
        messages = write_list(upload_id, data, PART, finish=True)
        for n, message in enumerate(messages):
            if n == len(messages) // 4:
                half.set()
                await rest.wait()
            yield message

    zombie_call = zombie.stub.WriteUpload(zombie_stream())
    await half.wait()
    await wait_until(
        lambda: _lease_epoch_at_least(mongo_database, settings, upload_id, 2),
        what="the zombie to hold the session",
    )
    # ...and stops (no renewal, no reading), for longer than its lease.
    zombie.process.send_signal(signal.SIGSTOP)
    try:
        response = await other.stub.WriteUpload(write_messages(upload_id, data, PART, finish=True))
    finally:
        zombie.process.send_signal(signal.SIGCONT)
    rest.set()

    # Awake again, the zombie finds the session taken over (or already finished).
    (late,) = await asyncio.gather(zombie_call, return_exceptions=True)
    if isinstance(late, pb.WriteUploadResponse):
        assert late.result.event_id == response.result.event_id
    else:
        assert isinstance(late, grpc.aio.AioRpcError), late
        trailers = cast(Iterable[tuple[str, bytes]], late.trailing_metadata() or ())
        if any(key == "grpc-status-details-bin" for key, _ in trailers):
            assert error_details(late)[:2] in {
                (grpc.StatusCode.ABORTED, "UPLOAD_TAKEN_OVER"),
                (grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND"),
            }
        else:  # the zombie's own client gave up on its transport (grpc/grpc#36066 and kin)
            assert late.code() in {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}, late
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def _lease_epoch_at_least(
    database: Database, settings: ServerSettings, upload_id: str, epoch: int
) -> bool:
    facts = database[settings.mongo_upload_facts_collection]
    found = await facts.find_one({"upload_id": upload_id, "kind": "lease", "epoch": epoch})
    return found is not None
