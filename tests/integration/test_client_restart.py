"""The SDK's upload retry across a real server process killed (SIGKILL) mid-upload and
restarted on the same port and database: the retry, with the same idempotency key, stores the
video once and leaves exactly one event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_client import AsyncCheckoutClient, RetryPolicy, UploadProgress
from checkout_server.config import ServerSettings
from devstack import free_port
from tests.helpers import MiB, mp4_bytes, sha256_hex
from tests.integration.processes import start_server
from tests.integration.storage_checks import object_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Collection = AsyncCollection[dict[str, Any]]


ServerStarter = Callable[[], Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def server_process(
    settings: ServerSettings, tmp_path: Path
) -> AsyncIterator[tuple[int, ServerStarter]]:
    """A port and a function that starts a real server process on it (again and again) and
    returns once it serves."""
    port = free_port()
    processes: list[asyncio.subprocess.Process] = []

    async def start() -> asyncio.subprocess.Process:
        log_path = tmp_path / f"server-{len(processes)}.log"
        process = await start_server(settings, port, log_path)
        processes.append(process)
        return process

    yield port, start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_upload_survives_a_server_restart_without_a_duplicate_event(
    server_process: tuple[int, ServerStarter],
    tmp_path: Path,
    s3: Minio,
    bucket: str,
    outbox_collection: Collection,
) -> None:
    port, start = server_process
    first = await start()
    data = mp4_bytes(24 * MiB, seed=11)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    restarted: list[asyncio.Task[asyncio.subprocess.Process]] = []

    async def restart() -> asyncio.subprocess.Process:
        await first.wait()
        return await start()

    def on_progress(p: UploadProgress) -> None:
        # Kill the server for real (no graceful stop) a third of the way in, once.
        if p.attempt == 1 and p.sent_bytes >= 8 * MiB and not restarted:
            first.kill()
            restarted.append(asyncio.get_running_loop().create_task(restart()))

    policy = RetryPolicy(attempts=10, initial_backoff_s=0.5, max_backoff_s=3)
    async with AsyncCheckoutClient(f"127.0.0.1:{port}", retry=policy) as client:
        upload = await client.upload(path, chunk_size=256 * 1024, on_progress=on_progress)

    await restarted[0]
    assert upload.attempts >= 2
    assert not upload.deduplicated  # the first attempt never completed: nothing to replay
    assert (upload.size_bytes, upload.sha256) == (len(data), sha256_hex(data))
    assert await outbox_collection.count_documents({}) == 1
    assert await object_keys(s3, bucket) == [upload.object_key]
