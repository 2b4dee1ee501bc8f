"""UploadVideo against real FerretDB and MinIO: stored bytes, outbox documents, bad input and
faults that leave nothing behind."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc
import pytest
from google.api import httpbody_pb2
from miniopy_async.api import Minio
from miniopy_async.error import S3Error
from miniopy_async.helpers import DictType
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App
from tests.helpers import (
    MiB,
    RacingOutbox,
    error_details,
    error_info,
    has_cyrillic,
    mp4_bytes,
    sha256_hex,
)
from tests.integration.storage_checks import (
    object_keys,
    object_sha256,
    pending_uploads,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Collection = AsyncCollection[dict[str, Any]]
CHUNK = 512 * 1024


def messages(
    data: bytes, meta: pb.UploadMetadata | None = None, chunk: int = CHUNK
) -> Iterator[pb.UploadVideoRequest]:
    yield pb.UploadVideoRequest(metadata=meta or pb.UploadMetadata(filename="clip.mp4"))
    for start in range(0, len(data), chunk):
        yield pb.UploadVideoRequest(chunk=data[start : start + chunk])


async def assert_nothing_left(
    s3: Minio, outbox: Collection, bucket: str, video_id: str | None = None
) -> None:
    assert await object_keys(s3, bucket) == []
    assert await outbox.count_documents({}) == 0
    key = f"input/{video_id}.mp4" if video_id else ""
    await wait_until(
        lambda: _nothing_pending(s3, bucket, key), what=f"uploads to {bucket}/{key} aborted"
    )


@pytest.mark.parametrize("size", [1000, 5 * MiB, 12 * MiB + 3])
async def test_upload_stores_object_then_outbox_document(
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    outbox_collection: Collection,
    bucket: str,
    size: int,
) -> None:
    data = mp4_bytes(size, seed=size)
    meta = pb.UploadMetadata(
        filename="клип.mp4", size_bytes=size, sha256=sha256_hex(data), content_type="video/mp4"
    )

    response = await stub.UploadVideo(messages(data, meta))

    assert response.status == "ok"
    assert response.event_id == response.video_id
    assert (response.bucket, response.object_key) == (bucket, f"input/{response.video_id}.mp4")
    assert (response.size_bytes, response.sha256) == (size, sha256_hex(data))
    stat = await s3.stat_object(bucket, response.object_key)
    assert stat.content_type == "video/mp4"
    assert await object_sha256(s3, bucket, response.object_key) == (size, sha256_hex(data))
    document = await outbox_collection.find_one({"_id": response.event_id})
    assert document is not None
    assert document["status"] == "new"
    assert document["payload"] == {
        "video_id": response.video_id,
        "bucket": bucket,
        "object_key": response.object_key,
        "filename": "клип.mp4",
        "content_type": "video/mp4",
        "size_bytes": size,
        "sha256": sha256_hex(data),
    }
    assert document["created_at"] == document["updated_at"]
    assert document["attempts"] == 0


async def test_upload_to_another_allowed_bucket(
    stub: pb_grpc.CheckoutServiceAsyncStub, s3: Minio, other_bucket: str
) -> None:
    response = await stub.UploadVideo(
        messages(mp4_bytes(2000), pb.UploadMetadata(bucket=other_bucket))
    )
    assert response.bucket == other_bucket
    assert await object_keys(s3, other_bucket) == [response.object_key]


def _meta(**fields: Any) -> pb.UploadMetadata:
    return pb.UploadMetadata(**fields)


BAD_INPUT = [
    pytest.param([], "MISSING_METADATA", id="no-messages"),
    pytest.param(
        [pb.UploadVideoRequest(chunk=mp4_bytes(100))], "MISSING_METADATA", id="chunk-first"
    ),
    pytest.param(
        [*messages(mp4_bytes(6 * MiB)), pb.UploadVideoRequest(metadata=_meta())],
        "DUPLICATE_METADATA",
        id="metadata-twice",
    ),
    pytest.param(list(messages(b"")), "EMPTY_FILE", id="empty-file"),
    pytest.param(list(messages(b"\x89PNG\r\n\x1a\n" + bytes(7 * MiB))), "NOT_MP4", id="not-mp4"),
    pytest.param(list(messages(mp4_bytes(65 * MiB))), "FILE_TOO_LARGE", id="too-large"),
    pytest.param(
        list(messages(mp4_bytes(11 * MiB), _meta(size_bytes=11 * MiB + 1))),
        "SIZE_MISMATCH",
        id="size-short",
    ),
    pytest.param(
        list(messages(mp4_bytes(11 * MiB), _meta(size_bytes=6 * MiB))),
        "SIZE_MISMATCH",
        id="size-over",
    ),
    pytest.param(
        list(messages(mp4_bytes(11 * MiB), _meta(sha256="ab" * 32))),
        "CHECKSUM_MISMATCH",
        id="sha256-mismatch",
    ),
    pytest.param(  # one part: the single PUT must not happen before the hash is checked
        list(messages(mp4_bytes(7_800), _meta(sha256="ab" * 32))),
        "CHECKSUM_MISMATCH",
        id="sha256-mismatch-one-part",
    ),
    pytest.param(
        list(messages(mp4_bytes(3 * MiB), _meta(size_bytes=2 * MiB))),
        "SIZE_MISMATCH",
        id="size-over-one-part",
    ),
    pytest.param(
        list(messages(mp4_bytes(100), _meta(bucket="secret"))), "BUCKET_NOT_ALLOWED", id="bucket"
    ),
    pytest.param(
        list(messages(mp4_bytes(100), _meta(filename="x" * 300))),
        "INVALID_FILENAME",
        id="long-name",
    ),
    pytest.param(
        list(messages(mp4_bytes(100), _meta(filename="a\x07b.mp4"))),
        "INVALID_FILENAME",
        id="control-char-name",
    ),
]


@pytest.mark.parametrize(("requests", "reason"), BAD_INPUT)
async def test_bad_input_is_refused_and_leaves_nothing(
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    outbox_collection: Collection,
    bucket: str,
    requests: list[pb.UploadVideoRequest],
    reason: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadVideo(iter(requests))

    code, got_reason, message = error_details(caught.value)
    assert (code, got_reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert has_cyrillic(message)
    await assert_nothing_left(s3, outbox_collection, bucket, _video_id(caught.value))


def _video_id(exc: grpc.aio.AioRpcError) -> str | None:
    """The video id the server put into the ErrorInfo, when it had got that far."""
    _, info = error_info(exc)
    return info.metadata.get("video_id") or None


# Shows as "clipexe.mp4": U+202E turns the rest of the name around.
SPOOFED_NAME = "clip\u202e4pm.exe"
HONEST_NAME = "видео 🎬 監視.mp4"
FORM_BOUNDARY = "name-boundary"


def _upload(stub: pb_grpc.CheckoutServiceAsyncStub, path: str, data: bytes, name: str) -> Any:
    """The call (to await) of an upload by `path` of `data` named `name`; for
    StartResumableUpload, its start."""
    if path == "UploadVideo":
        meta = pb.UploadMetadata(filename=name, sha256=sha256_hex(data))
        return stub.UploadVideo(messages(data, meta))
    if path == "REST multipart":  # the name in the file part, in UTF-8 as browsers send it
        head = (
            f'--{FORM_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{name}"\r\nContent-Type: video/mp4\r\n\r\n'
        ).encode()
        body = head + data + f"\r\n--{FORM_BOUNDARY}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={FORM_BOUNDARY}"
        pieces = [
            pb.UploadVideoHttpRequest(http_body=httpbody_pb2.HttpBody(data=body[i : i + CHUNK]))
            for i in range(0, len(body), CHUNK)
        ]
        pieces[0].http_body.content_type = content_type
        return stub.UploadVideoHttp(iter(pieces))
    assert path == "StartResumableUpload"
    return stub.StartResumableUpload(
        pb.StartResumableUploadRequest(
            metadata=pb.UploadMetadata(filename=name, size_bytes=len(data))
        )
    )


@pytest.mark.parametrize("path", ["UploadVideo", "REST multipart", "StartResumableUpload"])
async def test_a_filename_with_a_bidi_override_is_refused_and_an_honest_one_stored(
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    outbox_collection: Collection,
    mongo_database: AsyncDatabase[dict[str, Any]],
    settings: ServerSettings,
    bucket: str,
    path: str,
) -> None:
    data = mp4_bytes(MiB + 5)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _upload(stub, path, data, SPOOFED_NAME)

    code, reason, message = error_details(caught.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILENAME")
    assert message == "Недопустимое имя файла: содержит невидимый символ форматирования U+202E"
    assert await mongo_database[settings.mongo_upload_sessions_collection].count_documents({}) == 0
    await assert_nothing_left(s3, outbox_collection, bucket)

    # The same channel goes on working for a client with an honest name in any script (by the
    # same path; a resumable session's by UploadVideo).
    honest_path = "UploadVideo" if path == "StartResumableUpload" else path
    response = await _upload(stub, honest_path, data, HONEST_NAME)
    assert response.status == "ok"
    assert await object_keys(s3, bucket) == [response.object_key]
    event = await outbox_collection.find_one({"_id": response.event_id})
    assert event is not None
    assert event["payload"]["filename"] == HONEST_NAME


async def test_idempotent_retry_stores_once(
    stub: pb_grpc.CheckoutServiceAsyncStub, s3: Minio, outbox_collection: Collection, bucket: str
) -> None:
    data = mp4_bytes(6 * MiB)
    meta = pb.UploadMetadata(idempotency_key="retry-1", sha256=sha256_hex(data))
    first = await stub.UploadVideo(messages(data, meta))
    second = await stub.UploadVideo(messages(data, meta))
    assert second.event_id == first.event_id
    assert second.deduplicated
    assert not first.deduplicated
    assert await object_keys(s3, bucket) == [first.object_key]
    assert await outbox_collection.count_documents({}) == 1


def race(app: App, parties: int) -> RacingOutbox:
    """Make the next `parties` uploads with an idempotency key all miss each other in the
    look-up, so that the unique index of the insert decides (a decorator of the real port)."""
    racing = RacingOutbox(app.pipeline._outbox, parties)
    app.pipeline._outbox = racing
    return racing


async def test_concurrent_uploads_with_one_key_store_once(
    app: App,
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    outbox_collection: Collection,
    bucket: str,
) -> None:
    racing = race(app, 4)
    data = mp4_bytes(7 * MiB)
    meta = pb.UploadMetadata(idempotency_key="race-1")
    results = await asyncio.gather(*(stub.UploadVideo(messages(data, meta)) for _ in range(4)))
    # The look-up found nothing for any of them: the unique index refused three inserts.
    assert (racing.added, racing.duplicates) == (1, 3)
    assert len({r.event_id for r in results}) == 1
    assert sum(not r.deduplicated for r in results) == 1
    assert {(r.size_bytes, r.sha256) for r in results} == {(len(data), sha256_hex(data))}
    assert await object_keys(s3, bucket) == [results[0].object_key]
    assert await object_sha256(s3, bucket, results[0].object_key) == (len(data), sha256_hex(data))
    assert await outbox_collection.count_documents({}) == 1
    await wait_until(lambda: _nothing_pending(s3, bucket, ""), what="the losers' uploads aborted")


@pytest.mark.parametrize("declared", [True, False], ids=["sha256-declared", "undeclared"])
async def test_one_key_used_at_once_for_two_files_keeps_one_and_refuses_the_other(
    app: App,
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    outbox_collection: Collection,
    bucket: str,
    declared: bool,
) -> None:
    racing = race(app, 2)
    files = [mp4_bytes(6 * MiB, seed=1), mp4_bytes(6 * MiB, seed=2)]

    async def send(data: bytes) -> pb.UploadVideoResponse | grpc.aio.AioRpcError:
        meta = pb.UploadMetadata(
            idempotency_key="two-files", sha256=sha256_hex(data) if declared else ""
        )
        try:
            return await stub.UploadVideo(messages(data, meta))
        except grpc.aio.AioRpcError as exc:
            return exc

    outcomes = await asyncio.gather(*(send(data) for data in files))
    assert (racing.added, racing.duplicates) == (1, 1)
    won = [
        (o, d)
        for o, d in zip(outcomes, files, strict=True)
        if isinstance(o, pb.UploadVideoResponse)
    ]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(won) == 1, outcomes
    assert len(lost) == 1, outcomes
    winner, data = won[0]
    assert not winner.deduplicated
    # The loser's file is not the key's file: it is refused, never answered with the other.
    code, reason, message = error_details(lost[0])
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    assert has_cyrillic(message)
    assert await object_keys(s3, bucket) == [winner.object_key]
    assert await object_sha256(s3, bucket, winner.object_key) == (len(data), sha256_hex(data))
    assert await outbox_collection.count_documents({}) == 1
    await wait_until(lambda: _nothing_pending(s3, bucket, ""), what="the loser's upload aborted")


async def _stream_then_wait(
    data: bytes, reached: asyncio.Event, hold: asyncio.Event
) -> AsyncIterator[pb.UploadVideoRequest]:
    """Sends `data`, signals `reached`, waits for `hold`, then sends one more chunk."""
    for message in messages(data):
        yield message
    reached.set()
    await hold.wait()
    yield pb.UploadVideoRequest(chunk=b"\0" * CHUNK)


async def test_client_cancel_mid_stream_leaves_nothing(
    app: App,
    stub: pb_grpc.CheckoutServiceAsyncStub,
    s3: Minio,
    outbox_collection: Collection,
    bucket: str,
) -> None:
    reached, hold = asyncio.Event(), asyncio.Event()
    call = stub.UploadVideo(_stream_then_wait(mp4_bytes(11 * MiB), reached, hold))
    await reached.wait()
    # Two parts have been sent to MinIO by now: a multipart upload is open.
    await wait_until(lambda: _has_pending(s3, bucket), what="a multipart upload to open")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until(lambda: _nothing_pending(s3, bucket), what="the multipart upload aborted")
    await assert_nothing_left(s3, outbox_collection, bucket)


async def test_deadline_mid_stream_leaves_nothing(
    stub: pb_grpc.CheckoutServiceAsyncStub, s3: Minio, outbox_collection: Collection, bucket: str
) -> None:
    reached, hold = asyncio.Event(), asyncio.Event()
    # The deadline must not pass before the open multipart upload is seen (with a margin
    # for a loaded machine); the stream then waits for it.
    call = stub.UploadVideo(_stream_then_wait(mp4_bytes(11 * MiB), reached, hold), timeout=10)
    await reached.wait()
    await wait_until(lambda: _has_pending(s3, bucket), what="a multipart upload to open")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: _nothing_pending(s3, bucket), what="the multipart upload aborted")
    await assert_nothing_left(s3, outbox_collection, bucket)


async def _has_pending(s3: Minio, bucket: str) -> bool:
    return await pending_uploads(s3, bucket) > 0


async def _nothing_pending(s3: Minio, bucket: str, key: str = "") -> bool:
    return await pending_uploads(s3, bucket, key) == 0


def _crc32_header(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


async def test_a_video_of_one_part_is_one_put_carrying_its_checksum(
    stub: pb_grpc.CheckoutServiceAsyncStub, s3: Minio, bucket: str
) -> None:
    data = mp4_bytes(7_800)
    response = await stub.UploadVideo(messages(data, pb.UploadMetadata(sha256=sha256_hex(data))))

    stat = await s3.stat_object(
        bucket, response.object_key, extra_headers={"x-amz-checksum-mode": "ENABLED"}
    )
    # A multipart object's ETag ends in -<parts>; a single PUT's is the plain MD5.
    assert stat.etag is not None
    assert "-" not in stat.etag
    # MinIO kept the CRC32 it verified the body against: the PUT carried the header.
    assert isinstance(stat.metadata, Mapping)
    headers = {str(name).lower(): value for name, value in stat.metadata.items()}
    assert headers.get("x-amz-checksum-crc32") == _crc32_header(data)


async def test_a_multipart_video_is_stored_in_parts(
    app: App, stub: pb_grpc.CheckoutServiceAsyncStub, s3: Minio, bucket: str
) -> None:
    part = app.settings.upload_part_bytes
    data = mp4_bytes(2 * part + 123)
    response = await stub.UploadVideo(messages(data))
    stat = await s3.stat_object(bucket, response.object_key)
    assert stat.etag is not None
    assert stat.etag.endswith("-3")  # two full parts, then the rest, sent as it came
    assert await object_sha256(s3, bucket, response.object_key) == (len(data), sha256_hex(data))


async def test_storage_refuses_a_body_that_does_not_match_its_checksum(
    app: App, s3: Minio, bucket: str
) -> None:
    """What the upload's integrity rests on, now that part bodies are sent unsigned: MinIO
    checks each body against its x-amz-checksum-crc32 (over plain HTTP, with the server's own
    client) and stores nothing on a mismatch."""
    data = mp4_bytes(7_800)
    headers: DictType = {"x-amz-checksum-crc32": _crc32_header(data + b"?")}
    with pytest.raises(S3Error) as caught:
        await app.minio._put_object(bucket, "input/corrupt.mp4", io.BytesIO(data), headers)
    assert caught.value.code == "XAmzContentChecksumMismatch"
    assert await object_keys(s3, bucket) == []


async def test_client_cancel_of_a_one_part_upload_leaves_nothing(
    stub: pb_grpc.CheckoutServiceAsyncStub, s3: Minio, outbox_collection: Collection, bucket: str
) -> None:
    reached, hold = asyncio.Event(), asyncio.Event()
    call = stub.UploadVideo(_stream_then_wait(mp4_bytes(1 * MiB), reached, hold))
    await reached.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The client sent the whole video but never ended the stream: nothing may be stored.
    await assert_nothing_left(s3, outbox_collection, bucket)


async def test_a_refused_upload_is_drained_up_to_the_byte_cap(
    stub: pb_grpc.CheckoutServiceAsyncStub,
) -> None:
    # Refused at its first chunk (not an MP4) while the client goes on sending 128 MiB: the
    # server reads and drops at most DRAIN_MAX_BYTES (64 MiB, or DRAIN_MAX_S) of the rest, so
    # the client gets the server's own status, and stops being read once that is sent.
    sent = 0
    block = b"\0" * (1 * MiB)

    async def endless() -> AsyncIterator[pb.UploadVideoRequest]:
        nonlocal sent
        yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="x.mp4"))
        for _ in range(128):
            sent += len(block)
            yield pb.UploadVideoRequest(chunk=block)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadVideo(endless(), timeout=60)
    assert error_details(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_MP4")
    print(f"refused upload: the client sent {sent / MiB:.0f} MiB before the answer")
    # 64 MiB drained, plus what flow control let through meanwhile (a 4 MiB stream window).
    assert sent <= 64 * MiB + 16 * MiB


async def test_a_refused_upload_that_stalls_is_answered_after_the_drain_time_cap(
    stub: pb_grpc.CheckoutServiceAsyncStub,
) -> None:
    async def stalls() -> AsyncIterator[pb.UploadVideoRequest]:
        yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="x.mp4"))
        yield pb.UploadVideoRequest(chunk=b"not an mp4 at all" * 10)
        await asyncio.Event().wait()  # never ends its stream
        yield pb.UploadVideoRequest()

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadVideo(stalls(), timeout=60)
    waited_s = time.monotonic() - started
    assert error_details(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_MP4")
    # DRAIN_MAX_S (5 s), not the call's 60 s deadline.
    assert 4.5 <= waited_s < 30, waited_s
