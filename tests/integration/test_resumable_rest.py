"""Resumable uploads over REST through a real Envoy: POST /api/uploads, PATCH with a raw body
from `?offset=` (cut mid-body by curl itself, then resumed), GET and DELETE, errors in the one
JSON shape; and the curl walk-through of docs/uploads.md, run as written but for the port."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App
from devstack._paths import REPO_ROOT
from tests.helpers import MiB, has_cyrillic, mp4_bytes, sha256_hex
from tests.integration import curl
from tests.integration.envoy_front import Front, async_envoy_front
from tests.integration.resumable_helpers import assert_one_video
from tests.markdown import sh_blocks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Database = AsyncDatabase[dict[str, Any]]
PART = 5 * MiB


@pytest.fixture
async def front(app: App, tmp_path: Path) -> AsyncIterator[Front]:
    """A plaintext Envoy in front of the in-process server."""
    async with async_envoy_front(tmp_path, [app.port]) as front:
        yield front


def result_of(body: dict[str, Any]) -> pb.UploadVideoResponse:
    result = body["result"]
    return pb.UploadVideoResponse(
        status=result["status"],
        event_id=result["event_id"],
        video_id=result["video_id"],
        bucket=result["bucket"],
        object_key=result["object_key"],
        size_bytes=int(result["size_bytes"]),
        sha256=result["sha256"],
    )


async def test_a_curl_upload_cut_mid_body_resumes_with_patch_offset(
    front: Front,
    tmp_path: Path,
    s3: Minio,
    mongo_database: Database,
    settings: ServerSettings,
) -> None:
    data = mp4_bytes(14 * MiB + 99, seed=31)
    video = tmp_path / "video.mp4"
    video.write_bytes(data)
    status, started = await curl.answer(
        "-X",
        "POST",
        f"{front.url}/api/uploads",
        "-d",
        json.dumps(
            {"filename": "video.mp4", "size_bytes": str(len(data)), "sha256": sha256_hex(data)}
        ),
    )
    assert status == 200, started
    upload_id = started["upload_id"]
    assert (started["persisted_size"], started["part_size_bytes"]) == ("0", str(PART))

    # curl gives up part way through the body (at 4 MB/s for 2 s: about 8 MB of 14).
    cut = await curl.run(
        "-X",
        "PATCH",
        f"{front.url}/api/uploads/{upload_id}?offset=0",
        "-T",
        str(video),
        "--limit-rate",
        "4M",
        "--max-time",
        "2",
    )
    assert cut.exit_code == 28  # curl's "operation timed out": the cut
    status, body = await curl.answer(f"{front.url}/api/uploads/{upload_id}")
    assert status == 200, body
    offset = int(body["persisted_size"])
    assert offset in {PART, 2 * PART}, body  # whole parts only

    # Past what is stored: OUT_OF_RANGE (400), with the stored size in the details.
    status, body = await curl.answer(
        "-X",
        "PATCH",
        f"{front.url}/api/uploads/{upload_id}?offset={offset + 1}",
        "--data-binary",
        "@-",
    )
    assert status == 400, body
    assert body["code"] == 11
    assert has_cyrillic(body["message"])
    info = body["details"][0]
    assert info["reason"] == "UPLOAD_OFFSET_OUT_OF_RANGE"
    assert int(info["metadata"]["persisted_size"]) >= offset

    rest = tmp_path / "rest.bin"
    rest.write_bytes(data[offset:])
    status, body = await curl.answer(
        "-X",
        "PATCH",
        f"{front.url}/api/uploads/{upload_id}?offset={offset}&finish=true",
        "-T",
        str(rest),
    )
    assert status == 200, body
    result = result_of(body)
    await assert_one_video(s3, mongo_database, settings, result, data)

    status, body = await curl.answer(f"{front.url}/api/uploads/{upload_id}")
    assert (status, body["result"]["event_id"]) == (200, result.event_id)


async def test_delete_cancels_and_later_calls_are_not_found(
    front: Front, tmp_path: Path, s3: Minio, bucket: str
) -> None:
    data = mp4_bytes(6 * MiB, seed=32)
    piece = tmp_path / "piece.bin"
    piece.write_bytes(data[:PART])
    status, started = await curl.answer(
        "-X", "POST", f"{front.url}/api/uploads", "-d", json.dumps({"size_bytes": len(data)})
    )
    upload_id = started["upload_id"]
    status, body = await curl.answer(
        "-X", "PATCH", f"{front.url}/api/uploads/{upload_id}?offset=0", "-T", str(piece)
    )
    assert (status, body) == (200, {"persisted_size": str(PART)})

    status, body = await curl.answer("-X", "DELETE", f"{front.url}/api/uploads/{upload_id}")
    assert (status, body) == (200, {"status": "ok"})
    status, body = await curl.answer(f"{front.url}/api/uploads/{upload_id}")
    assert status == 404
    assert body["details"][0]["reason"] == "UPLOAD_NOT_FOUND"
    assert [o async for o in s3.list_objects(bucket, recursive=True)] == []


def walk_through_blocks() -> list[str]:
    """The ```sh blocks of docs/uploads.md's section on resumable uploads (the curl
    walk-through), in order."""
    return sh_blocks(REPO_ROOT / "docs" / "uploads.md", "Resumable uploads")


async def test_the_docs_walk_through_cuts_and_resumes_with_curl(
    front: Front,
    tmp_path: Path,
    s3: Minio,
    mongo_database: Database,
    settings: ServerSettings,
) -> None:
    data = mp4_bytes(17 * MiB + 5, seed=33)
    (tmp_path / "video.mp4").write_bytes(data)
    script = "\n".join(walk_through_blocks()).replace(
        "http://localhost:8080", f"http://localhost:{front.port}"
    )
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=tmp_path,
        env=curl.no_proxy_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    last = json.loads(out.decode().strip().splitlines()[-1])
    await assert_one_video(s3, mongo_database, settings, result_of(last), data)
