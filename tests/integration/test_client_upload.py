"""The SDK's uploads against the real server, FerretDB and MinIO: progress, stored bytes,
typed errors, and retries that never make a second event (a reply lost after the commit;
see test_client_restart.py for a server killed and restarted mid-upload)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_client import (
    AsyncCheckoutClient,
    CheckoutClient,
    CheckoutError,
    FailedPrecondition,
    InvalidArgument,
    RetryPolicy,
    Unavailable,
    UploadProgress,
)
from checkout_server import errors
from checkout_server.wiring.server import App
from devstack import free_port
from tests.helpers import MiB, has_cyrillic, mp4_bytes, sha256_hex
from tests.integration.storage_checks import object_keys, object_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Collection = AsyncCollection[dict[str, Any]]
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)


@pytest.fixture
async def client(app: App) -> AsyncIterator[AsyncCheckoutClient]:
    async with AsyncCheckoutClient(f"127.0.0.1:{app.port}", retry=FAST_RETRY) as client:
        yield client


def write_file(tmp_path: Path, data: bytes, name: str = "clip.mp4") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_upload_reports_progress_and_stores_the_file(
    client: AsyncCheckoutClient,
    tmp_path: Path,
    s3: Minio,
    outbox_collection: Collection,
    bucket: str,
) -> None:
    data = mp4_bytes(3 * MiB + 5, seed=7)
    path = write_file(tmp_path, data)
    events: list[UploadProgress] = []

    upload = await client.upload(path, chunk_size=256 * 1024, on_progress=events.append)

    chunks = -(-len(data) // (256 * 1024))
    assert events[0] == UploadProgress(sent_bytes=0, total_bytes=len(data), attempt=1)
    assert len(events) == chunks + 1
    assert [e.sent_bytes for e in events] == sorted(e.sent_bytes for e in events)
    assert events[-1] == UploadProgress(sent_bytes=len(data), total_bytes=len(data), attempt=1)
    assert upload.event_id == upload.video_id
    assert upload.bucket == bucket
    assert upload.object_key == f"input/{upload.video_id}.mp4"
    assert (upload.size_bytes, upload.sha256) == (len(data), sha256_hex(data))
    assert not upload.deduplicated
    assert upload.attempts == 1
    assert uuid.UUID(upload.idempotency_key).version == 4  # always sent, uuid4 by default
    assert await object_sha256(s3, bucket, upload.object_key) == (len(data), sha256_hex(data))
    document = await outbox_collection.find_one({"_id": upload.event_id})
    assert document is not None
    assert document["idempotency_key"] == upload.idempotency_key
    assert document["payload"]["filename"] == "clip.mp4"


async def test_sync_client_uploads_a_file_object_to_another_bucket(
    app: App, other_bucket: str, s3: Minio
) -> None:
    data = mp4_bytes(MiB + 1, seed=3)

    def upload() -> Any:
        with CheckoutClient(f"127.0.0.1:{app.port}") as client:
            return client.upload(io.BytesIO(data), bucket=other_bucket, filename="stream.mp4")

    # The blocking client runs its own event loop, so it gets a thread of its own here.
    result = await asyncio.to_thread(upload)
    assert result.bucket == other_bucket
    assert await object_sha256(s3, other_bucket, result.object_key) == (len(data), result.sha256)


async def test_same_key_replays_the_first_upload(
    client: AsyncCheckoutClient, tmp_path: Path, outbox_collection: Collection
) -> None:
    # Large enough that the replay's answer (sent right after the metadata) arrives while
    # the client is still writing: it must stop writing and return the answer, not an error.
    path = write_file(tmp_path, mp4_bytes(20 * MiB, seed=1))
    first = await client.upload(path, idempotency_key="key-1")
    for _ in range(3):
        again = await client.upload(path, idempotency_key="key-1", chunk_size=64 * 1024)
        assert again.deduplicated
        assert again.event_id == first.event_id
    assert await outbox_collection.count_documents({}) == 1


async def test_key_reused_for_another_file_is_refused(
    client: AsyncCheckoutClient, tmp_path: Path
) -> None:
    await client.upload(write_file(tmp_path, mp4_bytes(1000, seed=1), "a.mp4"), idempotency_key="k")
    with pytest.raises(FailedPrecondition) as caught:
        await client.upload(
            write_file(tmp_path, mp4_bytes(2000, seed=2), "b.mp4"), idempotency_key="k"
        )
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("content", "target", "reason"),
    [
        (b"not a video at all" * 100_000, "", "NOT_MP4"),
        (b"", "", "EMPTY_FILE"),
        (mp4_bytes(1000), "nope", "BUCKET_NOT_ALLOWED"),
    ],
)
async def test_refused_input_raises_invalid_argument(
    client: AsyncCheckoutClient,
    tmp_path: Path,
    s3: Minio,
    bucket: str,
    outbox_collection: Collection,
    content: bytes,
    target: str,
    reason: str,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.upload(write_file(tmp_path, content), bucket=target)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert has_cyrillic(error.message)
    assert str(error) == f"{error.message} ({reason})"
    assert await object_keys(s3, bucket) == []
    assert await outbox_collection.count_documents({}) == 0


async def test_unreachable_server_raises_unavailable_after_retries(tmp_path: Path) -> None:
    path = write_file(tmp_path, mp4_bytes(1000))
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    async with AsyncCheckoutClient(f"127.0.0.1:{free_port()}", retry=policy) as client:
        with pytest.raises(Unavailable) as caught:
            await client.upload(path)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert isinstance(caught.value, CheckoutError)
        assert caught.value.retriable
        with pytest.raises(Unavailable):
            await client.health()


async def test_reply_lost_after_commit_is_retried_without_a_second_event(
    app: App,
    client: AsyncCheckoutClient,
    tmp_path: Path,
    s3: Minio,
    bucket: str,
    outbox_collection: Collection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first attempt stores the video and its event, then the answer is lost (the call
    fails UNAVAILABLE): the retry, with the same key, gets the first result back."""
    original = app.pipeline.upload
    calls = 0

    async def commit_then_fail(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        result = await original(*args, **kwargs)
        if calls == 1:
            raise errors.StorageUnavailable("ответ потерян (тест)")
        return result

    monkeypatch.setattr(app.pipeline, "upload", commit_then_fail)
    data = mp4_bytes(2 * MiB, seed=5)
    upload = await client.upload(write_file(tmp_path, data))

    assert calls == 2
    assert upload.attempts == 2
    assert upload.deduplicated
    assert await outbox_collection.count_documents({}) == 1
    assert await object_keys(s3, bucket) == [upload.object_key]
    # The retry declared the hash of the first full read, so the server checked it.
    assert upload.sha256 == sha256_hex(data)
