"""The SDK's and the CLI's resumable uploads against real servers: a server killed mid-upload
and started again (the SDK backs off, asks for persisted_size, seeks and goes on), and
`checkout upload --resume` killed and run again (it goes on from what the server stored and
says where in its progress bar)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_client import AsyncCheckoutClient, RetryPolicy, UploadProgress
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App
from tests.helpers import MiB, mp4_bytes, sha256_hex
from tests.integration.console import CHECKOUT, cli_env, in_terminal
from tests.integration.resumable_helpers import ServerProcesses, assert_one_video
from tests.integration.storage_checks import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Database = AsyncDatabase[dict[str, Any]]
FAST_LEASE = {"UPLOAD_LEASE_TTL_S": "3", "UPLOAD_CLOCK_SKEW_S": "0.5"}


@pytest.fixture
def settings(settings: ServerSettings) -> ServerSettings:
    """Room for files above the SDK's resumable threshold (64 MiB)."""
    return settings.replace(upload_max_bytes=256 * MiB)


def as_result(upload: Any) -> pb.UploadVideoResponse:
    return pb.UploadVideoResponse(
        event_id=upload.event_id,
        video_id=upload.video_id,
        bucket=upload.bucket,
        object_key=upload.object_key,
        size_bytes=upload.size_bytes,
        sha256=upload.sha256,
    )


async def test_the_sdk_resumes_after_its_server_is_killed_and_restarted(
    settings: ServerSettings, tmp_path: Path, s3: Minio, mongo_database: Database
) -> None:
    servers = ServerProcesses(settings, tmp_path)
    try:
        server = await servers.start(env=FAST_LEASE)
        data = mp4_bytes(40 * MiB, seed=51)
        path = tmp_path / "clip.mp4"
        path.write_bytes(data)
        seen: list[UploadProgress] = []
        restarted: list[asyncio.Task[Any]] = []

        async def restart() -> None:
            await server.process.wait()
            await servers.start(port=server.port, env=FAST_LEASE)

        def on_progress(p: UploadProgress) -> None:
            seen.append(p)
            if not restarted and p.sent_bytes >= 25 * MiB:
                server.process.kill()  # no graceful stop
                restarted.append(asyncio.ensure_future(restart()))

        retry = RetryPolicy(attempts=8, initial_backoff_s=0.2, max_backoff_s=2.0)
        async with AsyncCheckoutClient(f"127.0.0.1:{server.port}", retry=retry) as client:
            upload = await client.upload(path, resumable=True, on_progress=on_progress)
        await restarted[0]

        assert upload.upload_id
        assert upload.attempts >= 2
        resumed = {p.resumed_from_bytes for p in seen if p.attempt > 1}
        assert max(resumed) >= 5 * MiB  # went on from what was stored, not from byte 0
        assert (upload.size_bytes, upload.sha256) == (len(data), sha256_hex(data))
        await assert_one_video(s3, mongo_database, settings, as_result(upload), data)
    finally:
        await servers.close()


async def test_large_files_are_resumable_by_default_and_small_ones_are_not(
    app: App, tmp_path: Path, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    small, large = mp4_bytes(3 * MiB, seed=52), mp4_bytes(65 * MiB, seed=53)
    async with AsyncCheckoutClient(f"127.0.0.1:{app.port}") as client:
        (tmp_path / "small.mp4").write_bytes(small)
        plain = await client.upload(tmp_path / "small.mp4")
        assert plain.upload_id == ""
        await s3.remove_object(plain.bucket, plain.object_key)
        await mongo_database[settings.mongo_outbox_collection].delete_many({})
        (tmp_path / "large.mp4").write_bytes(large)
        resumable = await client.upload(tmp_path / "large.mp4")
    assert resumable.upload_id
    await assert_one_video(s3, mongo_database, settings, as_result(resumable), large)


async def test_upload_resume_goes_on_after_the_cli_was_killed(
    app: App, tmp_path: Path, s3: Minio, mongo_database: Database, settings: ServerSettings
) -> None:
    address = f"127.0.0.1:{app.port}"
    data = mp4_bytes(96 * MiB, seed=54)
    (tmp_path / "clip.mp4").write_bytes(data)
    first = await asyncio.create_subprocess_exec(
        CHECKOUT,
        "upload",
        "clip.mp4",
        "--resume",
        "--json",
        cwd=tmp_path,
        env=cli_env(address),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    facts = mongo_database[settings.mongo_upload_facts_collection]

    async def two_parts() -> bool:
        return await facts.count_documents({"kind": "part"}) >= 2

    await wait_until(two_parts, timeout_s=60, what="two parts stored")
    first.kill()
    await first.wait()

    code, screen = await asyncio.to_thread(
        in_terminal, ["upload", "clip.mp4", "--resume"], address=address, cwd=tmp_path, columns=160
    )

    assert code == 0, screen
    assert "продолжено с" in screen  # the bar's label names the resumed offset
    assert "uploaded clip.mp4" in screen
    events = await mongo_database[settings.mongo_outbox_collection].find().to_list()
    assert len(events) == 1
    result = pb.UploadVideoResponse(
        event_id=events[0]["_id"],
        video_id=events[0]["_id"],
        bucket=events[0]["payload"]["bucket"],
        object_key=events[0]["payload"]["object_key"],
        size_bytes=len(data),
        sha256=events[0]["payload"]["sha256"],
    )
    await assert_one_video(s3, mongo_database, settings, result, data)
