"""The grpcurl cookbook of docs/api.md, run as written (but for the port and the descriptor set's
path) against the whole stack: the streaming upload from the shell stores the file, the
watch ends at `ready`, and `describe` shows the proto comments."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from miniopy_async.api import Minio

from devstack._paths import REPO_ROOT
from devstack._stack import DESCRIPTOR, LocalStack
from tests.helpers import MiB, mp4_bytes
from tests.integration.storage_checks import object_sha256
from tests.markdown import sh_blocks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def cookbook_blocks() -> list[str]:
    """The ```sh blocks of docs/api.md's "grpcurl cookbook" section, in order."""
    return sh_blocks(REPO_ROOT / "docs" / "api.md", "grpcurl cookbook")


def run_block(stack: LocalStack, block: str, cwd: Path, **env: str) -> str:
    script = block.replace("localhost:50051", f"127.0.0.1:{stack.ports.grpc}").replace(
        "build/checkout.pb", str(DESCRIPTOR)
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={
            **os.environ,
            "PATH": f"{REPO_ROOT / '.stack' / 'bin'}{os.pathsep}{os.environ['PATH']}",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def s3(stack: LocalStack) -> Minio:
    return Minio(f"127.0.0.1:{stack.ports.minio}", "minioadmin", "minioadmin", secure=False)


async def stored(stack: LocalStack, key: str) -> tuple[int, str]:
    client = s3(stack)
    try:
        return await object_sha256(client, "videos", key)
    finally:
        await client.close_session()  # type: ignore[no-untyped-call]


async def put_result(stack: LocalStack, video_id: str, prediction: object) -> None:
    client = s3(stack)
    try:
        raw = json.dumps(prediction).encode()
        await client.put_object("videos", f"output/{video_id}.json", io.BytesIO(raw), len(raw))
    finally:
        await client.close_session()  # type: ignore[no-untyped-call]


def test_cookbook_blocks_are_there() -> None:
    blocks = cookbook_blocks()
    assert len(blocks) == 3
    assert "grpcurl -plaintext -d @" in blocks[1]
    assert "/WatchStatus" in blocks[2]


def test_cookbook_upload_watch_and_calls(stack: LocalStack, tmp_path: Path) -> None:
    calls, upload, watch = cookbook_blocks()
    data = mp4_bytes(2 * MiB + 3, seed=13)  # three chunks, the last one short
    (tmp_path / "video.mp4").write_bytes(data)

    response = json.loads(run_block(stack, upload, tmp_path))
    assert response["status"] == "ok"
    assert response["sha256"] == hashlib.sha256(data).hexdigest()
    assert response["size_bytes"] == str(len(data))
    size, digest = asyncio.run(stored(stack, response["object_key"]))
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())

    event_id = response["event_id"]
    prediction = {"objects": [{"label": "dog", "score": 0.75}]}
    asyncio.run(put_result(stack, response["video_id"], prediction))
    # The watch ends by itself once the result makes the event ready.
    updates = [
        json.loads(u)
        for u in re.split(
            r"(?<=})\n(?={)", run_block(stack, watch, tmp_path, EVENT_ID=event_id).strip()
        )
    ]
    assert updates[-1]["status"] == "ready"
    assert {u["event_id"] for u in updates} == {event_id}

    out = run_block(stack, calls, tmp_path, EVENT_ID=event_id)
    assert "checkout.v1.CheckoutService\n" in out  # list
    assert "// Streams one video in" in out  # describe shows the RPC's comment
    assert "// The event (a UUID)." in out  # and the fields'
    assert event_id in out  # ListStatuses with status ready
    assert '"label": "dog"' in out  # GetResult's prediction
