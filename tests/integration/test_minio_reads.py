"""The MinIO adapters' reads (MinioStorage.read and stat, MinioMultipart.object_sha256 and
object_size) against a real MinIO: what a present object holds, None for a missing one, and
the one GET helper they share refusing an object over the read limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from checkout_server.adapters.minio_multipart import MinioMultipart
from checkout_server.adapters.minio_storage import MinioStorage
from checkout_server.config import ServerSettings
from checkout_server.errors import ObjectTooLarge
from checkout_server.wiring.clients import minio_client
from tests.helpers import MiB, sha256_hex

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def adapters(
    settings: ServerSettings,
) -> AsyncIterator[tuple[MinioStorage, MinioMultipart]]:
    client = minio_client(settings)
    storage = MinioStorage(client)
    await storage.ensure_bucket(settings.default_bucket)
    yield storage, MinioMultipart(client)
    await client.close_session()  # type: ignore[no-untyped-call]


async def test_reads_of_a_present_and_a_missing_object(
    adapters: tuple[MinioStorage, MinioMultipart], bucket: str
) -> None:
    storage, multipart = adapters
    data = bytes(range(256)) * (5 * MiB // 256) + b"tail"  # more than one hashing block
    # Written as the server writes (its bodies are chunks, not one large bytes object).
    writer = storage.open_writer(bucket, "here.bin", "application/octet-stream")
    await writer.finish([data[i : i + MiB] for i in range(0, len(data), MiB)])

    assert await storage.read(bucket, "here.bin", max_bytes=len(data)) == data
    found = await storage.stat(bucket, "here.bin")
    assert found is not None
    assert found.size_bytes == len(data)
    assert await multipart.object_sha256(bucket, "here.bin") == (len(data), sha256_hex(data))
    assert await multipart.object_size(bucket, "here.bin") == len(data)
    with pytest.raises(ObjectTooLarge):
        await storage.read(bucket, "here.bin", max_bytes=len(data) - 1)

    assert await storage.read(bucket, "gone.bin", max_bytes=MiB) is None
    assert await storage.stat(bucket, "gone.bin") is None
    assert await multipart.object_sha256(bucket, "gone.bin") is None
    assert await multipart.object_size(bucket, "gone.bin") is None
