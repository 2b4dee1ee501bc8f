"""Resumable uploads against real FerretDB and MinIO: cuts at random offsets and resumes,
offset rules, CRC32C per chunk, idempotent finish, cancel. Every finished upload is checked
for its bytes (SHA-256 of the object), exactly one outbox event and nothing left behind."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import google_crc32c
import grpc
import hypothesis
import pytest
from hypothesis import strategies as st
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import create_app
from tests.helpers import MiB, error_details, error_info, has_cyrillic, mp4_bytes
from tests.integration.resumable_helpers import (
    assert_nothing_left,
    assert_one_video,
    cut_write,
    metadata,
    write_list,
    write_messages,
)
from tests.integration.storage_checks import object_keys, pending_uploads, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

if TYPE_CHECKING:  # the async stub exists only in the type stubs
    Stub = pb_grpc.CheckoutServiceAsyncStub
Database = AsyncDatabase[dict[str, Any]]
PART = 5 * MiB  # the tests' UPLOAD_PART_BYTES


async def start(stub: Stub, data: bytes, **fields: Any) -> pb.StartResumableUploadResponse:
    return await stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=metadata(data, **fields))
    )


async def status(stub: Stub, upload_id: str) -> pb.QueryUploadStatusResponse:
    return await stub.QueryUploadStatus(pb.QueryUploadStatusRequest(upload_id=upload_id))


def resume_offset(exc: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str) -> int:
    """The persisted size a refusal with this code and reason (and a Russian message) tells
    the client to write from."""
    got_code, got_reason, message = error_details(exc)
    assert (got_code, got_reason) == (code, reason)
    assert has_cyrillic(message)
    return int(error_info(exc)[1].metadata["persisted_size"])


async def test_an_unbroken_resumable_upload_gives_what_upload_video_gives(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings, bucket: str
) -> None:
    data = mp4_bytes(12 * MiB + 5, seed=1)
    started = await start(stub, data)
    assert (started.persisted_size, started.part_size_bytes) == (0, PART)
    assert started.expire_time.seconds > 0

    response = await stub.WriteUpload(write_messages(started.upload_id, data, 0, finish=True))

    result = response.result
    assert (result.status, result.bucket) == ("ok", bucket)
    assert result.event_id == result.video_id
    assert result.object_key == f"input/{result.video_id}.mp4"
    assert not result.deduplicated
    await assert_one_video(s3, mongo_database, settings, result, data)
    queried = await status(stub, started.upload_id)
    assert queried.WhichOneof("write_status") == "result"
    assert queried.result.event_id == result.event_id


async def test_persisted_size_moves_only_at_part_boundaries(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(17 * MiB, seed=2)
    upload_id = (await start(stub, data)).upload_id

    # A stream that ends without finish_write keeps whole parts only.
    response = await stub.WriteUpload(write_messages(upload_id, data, 0, 2 * PART + 123))
    assert response.persisted_size == 2 * PART
    assert (await status(stub, upload_id)).persisted_size == 2 * PART

    # Resuming from an earlier offset skips the overlap.
    response = await stub.WriteUpload(write_messages(upload_id, data, PART + 7, 3 * PART))
    assert response.persisted_size == 3 * PART

    response = await stub.WriteUpload(write_messages(upload_id, data, 3 * PART, finish=True))
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def test_a_cut_stream_resumes_from_persisted_size(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(16 * MiB, seed=3)
    upload_id = (await start(stub, data)).upload_id
    await cut_write(stub, upload_id, data, 0, 11 * MiB, part_bytes=PART)
    assert (await status(stub, upload_id)).persisted_size == 2 * PART
    persisted = 2 * PART

    response = await stub.WriteUpload(write_messages(upload_id, data, persisted, finish=True))
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def test_a_write_streaming_at_the_end_of_a_stop_is_told_where_to_resume(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    """A server stopping with a write still streaming answers it UNAVAILABLE SHUTTING_DOWN
    with the persisted size before the grace period ends (not gRPC's bare UNAVAILABLE);
    the client resumes from there on another server."""
    data = mp4_bytes(12 * MiB, seed=31)
    app = await create_app(settings)
    await app.start()
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stopping: Stub = pb_grpc.CheckoutServiceStub(channel)
            upload_id = (await start(stopping, data)).upload_id

            async def one_part_then_stall() -> Any:
                for message in write_list(upload_id, data, 0, PART + 123):
                    yield message
                await asyncio.Event().wait()  # never sends the rest

            write = asyncio.ensure_future(stopping.WriteUpload(one_part_then_stall()))

            async def part_committed() -> bool:
                return (await status(stub, upload_id)).persisted_size == PART

            await wait_until(part_committed, timeout_s=30, what="the first part committed")
            await app.stop(grace_s=2.0)
            stopped = True
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await write
    finally:
        if not stopped:
            await app.stop(grace_s=0)
    assert resume_offset(caught.value, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN") == PART

    response = await stub.WriteUpload(write_messages(upload_id, data, PART, finish=True))
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def test_an_offset_beyond_persisted_size_is_out_of_range_with_the_size(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(11 * MiB, seed=4)
    upload_id = (await start(stub, data)).upload_id
    await stub.WriteUpload(write_messages(upload_id, data, 0, PART))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(upload_id, data, PART + 1, finish=True))
    out_of_range = grpc.StatusCode.OUT_OF_RANGE, "UPLOAD_OFFSET_OUT_OF_RANGE"
    assert resume_offset(caught.value, *out_of_range) == PART

    response = await stub.WriteUpload(write_messages(upload_id, data, PART, finish=True))
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def test_offsets_within_a_stream_must_be_contiguous(stub: Stub) -> None:
    data = mp4_bytes(6 * MiB, seed=5)
    upload_id = (await start(stub, data)).upload_id
    messages = write_list(upload_id, data, 0, finish=True)
    del messages[3]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(iter(messages))
    code, reason, _ = error_details(caught.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UPLOAD_OFFSET_NOT_CONTIGUOUS")
    assert (await status(stub, upload_id)).persisted_size == 0


async def test_bytes_beyond_the_declared_size_and_an_early_finish_are_out_of_range(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(6 * MiB, seed=6)
    upload_id = (await start(stub, data)).upload_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(upload_id, data + b"x" * 10, 0, finish=True))
    assert error_details(caught.value)[:2] == (grpc.StatusCode.OUT_OF_RANGE, "UPLOAD_BEYOND_SIZE")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(upload_id, data, 0, 6 * MiB - 1, finish=True))
    assert error_details(caught.value)[:2] == (grpc.StatusCode.OUT_OF_RANGE, "UPLOAD_BEYOND_SIZE")

    response = await stub.WriteUpload(write_messages(upload_id, data, 0, finish=True))
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def test_a_chunk_crc32c_mismatch_is_data_loss_and_the_session_resumes(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(13 * MiB, seed=7)
    upload_id = (await start(stub, data)).upload_id
    messages = write_list(upload_id, data, 0, finish=True)
    bad = 6 * MiB // len(messages[0].checksummed_data.content)
    messages[bad].checksummed_data.crc32c ^= 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(iter(messages))
    persisted = resume_offset(caught.value, grpc.StatusCode.DATA_LOSS, "CHUNK_CHECKSUM_MISMATCH")
    assert persisted == PART  # the part before the bad chunk is durable
    assert (await status(stub, upload_id)).persisted_size == PART

    response = await stub.WriteUpload(write_messages(upload_id, data, persisted, finish=True))
    await assert_one_video(s3, mongo_database, settings, response.result, data)


async def test_finish_is_idempotent_and_gives_one_event(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(7 * MiB, seed=8)
    upload_id = (await start(stub, data)).upload_id
    first = (await stub.WriteUpload(write_messages(upload_id, data, 0, finish=True))).result
    again = await stub.WriteUpload(write_messages(upload_id, data, len(data), finish=True))
    assert again.result.event_id == first.event_id
    assert again.result.deduplicated
    await assert_one_video(s3, mongo_database, settings, first, data)


async def test_a_repeated_idempotency_key_returns_the_session_then_the_result(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(6 * MiB, seed=9)
    first = await start(stub, data, idempotency_key="resume-key-1")
    await stub.WriteUpload(write_messages(first.upload_id, data, 0, PART))
    again = await start(stub, data, idempotency_key="resume-key-1")
    assert (again.upload_id, again.persisted_size) == (first.upload_id, PART)

    response = await stub.WriteUpload(write_messages(first.upload_id, data, PART, finish=True))
    finished = await start(stub, data, idempotency_key="resume-key-1")
    assert finished.result.event_id == response.result.event_id
    assert finished.result.deduplicated
    await assert_one_video(s3, mongo_database, settings, response.result, data)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await start(stub, data[:-1], idempotency_key="resume-key-1")
    assert error_details(caught.value)[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
    )


async def test_a_declared_sha256_that_does_not_match_leaves_nothing(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings, bucket: str
) -> None:
    data = mp4_bytes(8 * MiB, seed=10)
    started = await stub.StartResumableUpload(
        pb.StartResumableUploadRequest(
            metadata=pb.UploadMetadata(size_bytes=len(data), sha256="0" * 64)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(started.upload_id, data, 0, finish=True))
    assert error_details(caught.value)[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CHECKSUM_MISMATCH",
    )
    await assert_nothing_left(s3, mongo_database, settings, bucket)


async def test_a_declared_crc32c_that_does_not_match_leaves_nothing(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings, bucket: str
) -> None:
    data = mp4_bytes(8 * MiB, seed=11)
    started = await stub.StartResumableUpload(
        pb.StartResumableUploadRequest(
            metadata=pb.UploadMetadata(size_bytes=len(data)),
            crc32c=google_crc32c.value(data) ^ 1,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(started.upload_id, data, 0, finish=True))
    assert error_details(caught.value)[:2] == (grpc.StatusCode.DATA_LOSS, "FILE_CRC32C_MISMATCH")
    await assert_nothing_left(s3, mongo_database, settings, bucket)


async def test_cancel_aborts_the_session(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings, bucket: str
) -> None:
    data = mp4_bytes(12 * MiB, seed=12)
    upload_id = (await start(stub, data)).upload_id
    await stub.WriteUpload(write_messages(upload_id, data, 0, 2 * PART))
    assert await pending_uploads(s3, bucket) == 1

    await stub.CancelUpload(pb.CancelUploadRequest(upload_id=upload_id))

    for call in (
        status(stub, upload_id),
        stub.WriteUpload(write_messages(upload_id, data, 2 * PART, finish=True)),
        stub.CancelUpload(pb.CancelUploadRequest(upload_id=upload_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert error_details(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND")
    await assert_nothing_left(s3, mongo_database, settings, bucket)


async def test_a_finished_upload_cannot_be_cancelled(stub: Stub) -> None:
    data = mp4_bytes(1000, seed=13)
    upload_id = (await start(stub, data)).upload_id
    await stub.WriteUpload(write_messages(upload_id, data, 0, finish=True))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelUpload(pb.CancelUploadRequest(upload_id=upload_id))
    assert error_details(caught.value)[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UPLOAD_FINISHED",
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"size_bytes": 0}, "UPLOAD_SIZE_REQUIRED"),
        ({"size_bytes": 10, "bucket": "nope"}, "BUCKET_NOT_ALLOWED"),
        ({"size_bytes": 10, "sha256": "xyz"}, "INVALID_SHA256"),
    ],
)
async def test_start_validates_like_upload_video(
    stub: Stub, fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.StartResumableUpload(
            pb.StartResumableUploadRequest(metadata=pb.UploadMetadata(**fields))
        )
    assert error_details(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, reason)


async def test_unknown_and_malformed_sessions(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await status(stub, "00000000-0000-4000-8000-000000000000")
    assert error_details(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await status(stub, "not-a-uuid")
    assert error_details(caught.value)[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPLOAD_ID",
    )


async def test_a_non_mp4_start_is_refused_at_the_first_bytes(stub: Stub) -> None:
    data = b"\x00" * (6 * MiB)
    upload_id = (await start(stub, data)).upload_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(upload_id, data, 0, finish=True))
    assert error_details(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_MP4")


HYPOTHESIS_DATA = mp4_bytes(16 * MiB + 12345, seed=99)
BACKS = st.sampled_from([0, 1, 1000, PART // 2, PART, 2 * PART + 17])


@pytest.mark.timeout(600)
async def test_cuts_at_random_offsets_then_resumes_give_the_file_once(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings, bucket: str
) -> None:
    """Property: however a file is cut (1 to 3 cuts anywhere) and resumed (from
    persisted_size, or from an earlier offset), it is stored once, byte for byte, with one
    event and no multipart upload left open."""
    loop = asyncio.get_running_loop()
    data = HYPOTHESIS_DATA

    async def scenario(cuts: list[int], backs: list[int]) -> None:
        upload_id = (await start(stub, data)).upload_id
        offset = persisted = 0
        for cut, back in zip(sorted(cuts), backs, strict=True):
            expected = persisted
            if cut > offset:
                await cut_write(stub, upload_id, data, offset, cut, part_bytes=PART)
                expected = max(persisted, cut // PART * PART)
            persisted = (await status(stub, upload_id)).persisted_size
            # Never decreasing, and only whole parts: at most the part being collected is lost.
            assert persisted == expected
            offset = max(0, persisted - back)
        response = await stub.WriteUpload(write_messages(upload_id, data, offset, finish=True))
        await assert_one_video(s3, mongo_database, settings, response.result, data)
        # The next example starts from an empty bucket and outbox.
        await s3.remove_object(bucket, response.result.object_key)
        await mongo_database[settings.mongo_outbox_collection].delete_many({})

    # derandomize: the same eight examples in every run (derived from this test), so a failure
    # comes back on a rerun and a green CI says which cuts passed.
    @hypothesis.settings(max_examples=8, deadline=None, database=None, derandomize=True)
    @hypothesis.given(
        cuts=st.lists(
            st.integers(1, len(data) - 1)
            | st.sampled_from([n * PART + d for n in (1, 2, 3) for d in (-1, 0, 1)]),
            min_size=1,
            max_size=3,
        ),
        backs=st.lists(BACKS, min_size=3, max_size=3),
    )
    def prop(cuts: list[int], backs: list[int]) -> None:
        future = asyncio.run_coroutine_threadsafe(scenario(cuts, backs[: len(cuts)]), loop)
        future.result(timeout=120)

    await asyncio.to_thread(prop)


async def test_a_multipart_upload_that_vanished_is_never_taken_for_a_finished_one(
    stub: Stub, s3: Minio, mongo_database: Database, settings: ServerSettings, bucket: str
) -> None:
    data = mp4_bytes(2 * PART, seed=14)
    upload_id = (await start(stub, data)).upload_id
    response = await stub.WriteUpload(write_messages(upload_id, data, 0))
    assert response.persisted_size == len(data)  # every part durable, not finished
    # MinIO loses the upload (its own stale-upload expiry, an operator...).
    listed = await s3._list_multipart_uploads(bucket)
    (upload,) = listed.uploads
    assert upload.upload_id is not None
    await s3._abort_multipart_upload(bucket, upload.object_name, upload.upload_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(upload_id, data, len(data), finish=True))
    assert error_details(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND")
    assert await object_keys(s3, bucket) == []
    assert await mongo_database[settings.mongo_outbox_collection].count_documents({}) == 0


async def test_a_part_committed_with_another_etag_is_detected_never_accepted(
    stub: Stub, mongo_database: Database, settings: ServerSettings
) -> None:
    data = mp4_bytes(3 * PART, seed=15)
    upload_id = (await start(stub, data)).upload_id
    # Another writer's commit of part 2, with bytes other than these.
    await mongo_database[settings.mongo_upload_facts_collection].insert_one(
        {
            "_id": f"{upload_id}:part:00002",
            "upload_id": upload_id,
            "kind": "part",
            "number": 2,
            "offset": PART,
            "size_bytes": PART,
            "etag": "0123456789abcdef0123456789abcdef",
            "crc32c": 0,
            "running_crc32c": 0,
        }
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(upload_id, data, 0, finish=True))
    assert error_details(caught.value)[:2] == (grpc.StatusCode.ABORTED, "UPLOAD_PART_CONFLICT")
    # Finishing with that commit is refused too: MinIO holds other bytes for part 2.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteUpload(write_messages(upload_id, data, 2 * PART, finish=True))
    assert error_details(caught.value)[:2] == (grpc.StatusCode.ABORTED, "UPLOAD_PART_CONFLICT")
