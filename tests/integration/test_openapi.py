"""schemathesis against the whole stack through Envoy, driven by the OpenAPI document Envoy
serves: no 5xx, responses as the document describes them, no schema-valid request refused
and no schema-invalid one accepted, and none of schemathesis's warnings (data mostly
rejected, ids never found, ...).

Bounded: a fixed number of cases per operation and a fixed seed (so a failure reproduces).
Left out: the streaming operations (the upload, whose body schemathesis cannot make a video
of, and both watches, which last until a terminal status) and Cleanup (it deletes everything);
tests/integration/test_rest.py covers those.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from miniopy_async.api import Minio

from devstack._stack import LocalStack
from tests.helpers import mp4_bytes
from tests.integration import curl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MAX_EXAMPLES = 50  # per operation and phase
SEED = 20261201
EXCLUDED = (
    "CheckoutService_UploadVideoHttp",
    "CheckoutService_WatchStatus",
    "CheckoutService_WatchStatus2",
    "CheckoutService_Cleanup",
    # Resumable sessions: starting one needs a declared size and an allowed bucket, writing
    # one is a streamed upload (test_resumable_rest.py covers both).
    "CheckoutService_StartResumableUpload",
    "CheckoutService_WriteUploadHttp",
)
TESTED = (
    "GET /api",
    "GET /api/health",
    "GET /api/status/all",
    "GET /api/status/{event_id}",
    "GET /api/result_video/{event_id}",
    "GET /api/video/{event_id}",
    "POST /api/request",
    "GET /api/uploads/{upload_id}",
    "DELETE /api/uploads/{upload_id}",
)


def _curl_json(*args: str) -> Any:
    """The JSON body of a request that must succeed (curl fails on an HTTP error status)."""
    return curl.answer_sync("--fail-with-body", *args)[1]


def seed_stack(stack: LocalStack, tmp_path: Path) -> dict[str, list[str]]:
    """Events for schemathesis to find: two uploads, one of them with a result (ready).
    Generated ids would only ever meet 404, and page tokens are the server's own."""
    base = f"http://127.0.0.1:{stack.ports.rest}"
    uploads = []
    for seed in (1, 2):
        video = tmp_path / f"seed-{seed}.mp4"
        video.write_bytes(mp4_bytes(64 * 1024, seed=seed))
        uploads.append(_curl_json("-X", "POST", f"{base}/api/upload_video", "-F", f"file=@{video}"))
    _put_result(stack, uploads[0]["video_id"], {"objects": [{"label": "cat", "score": 0.9}]})
    sessions = [
        _curl_json("-X", "POST", f"{base}/api/uploads", "-d", '{"size_bytes": "1000"}')
        for _ in range(3)
    ]
    page = _curl_json(f"{base}/api/status/all?page_size=1")
    assert page["next_page_token"], page
    return {
        "event_ids": [u["event_id"] for u in uploads],
        "video_ids": [u["video_id"] for u in uploads],
        "buckets": ["", "videos"],
        "page_tokens": ["", page["next_page_token"]],
        "upload_ids": [s["upload_id"] for s in sessions],
    }


def _put_result(stack: LocalStack, video_id: str, prediction: dict[str, Any]) -> None:
    async def put() -> None:
        s3 = Minio(f"127.0.0.1:{stack.ports.minio}", "minioadmin", "minioadmin", secure=False)
        try:
            raw = json.dumps(prediction).encode()
            await s3.put_object("videos", f"output/{video_id}.json", io.BytesIO(raw), len(raw))
        finally:
            await s3.close_session()  # type: ignore[no-untyped-call]

    asyncio.run(put())


def schemathesis_config(data: dict[str, list[str]]) -> str:
    """schemathesis.toml: the seeded values for ids, buckets and page tokens, every warning
    an error, and the one check left out."""
    lines = [
        "[warnings]",
        "fail-on = true",
        "",
        # Envoy answers a method a path does not have with 404 ROUTE_NOT_FOUND (documented in
        # docs/api.md's table of Envoy's errors), not the 405 this check wants.
        "[checks.unsupported_method]",
        "enabled = false",
        "",
        "[dictionaries]",
        *(f"{name} = {{ values = {json.dumps(values)} }}" for name, values in data.items()),
        "",
        "[parameters]",
        '"path.event_id" = { dictionary = "event_ids" }',
        '"path.upload_id" = { dictionary = "upload_ids" }',
        '"query.page_token" = { dictionary = "page_tokens" }',
        '"query.bucket" = { dictionary = "buckets" }',
        '"body.video_id" = { dictionary = "video_ids" }',
        '"body.bucket" = { dictionary = "buckets" }',
    ]
    return "\n".join(lines) + "\n"


def run_schemathesis(base: str, config: Path, report: Path, *, schema: str = "") -> dict[str, Any]:
    """`st run` on `schema` (default: the document Envoy serves); returns its JSON report."""
    st = Path(sys.executable).parent / "st"
    command = [
        str(st),
        "--config-file",
        str(config),
        "run",
        schema or f"{base}/api/openapi.yaml",
        "--url",
        base,
        *(arg for op in EXCLUDED for arg in ("--exclude-operation-id", op)),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    # In the test's folder: schemathesis and Hypothesis keep caches in the working directory.
    # Its HTTP client (requests) would send even 127.0.0.1 through a proxy in the environment.
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        cwd=report.parent,
        env=curl.no_proxy_env(),
    )
    assert report.exists(), result.stdout + result.stderr
    summary: dict[str, Any] = json.loads(report.read_text())
    summary["output"] = result.stdout + result.stderr
    summary["returncode"] = result.returncode
    return summary


def test_schemathesis_finds_nothing(stack: LocalStack, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config(seed_stack(stack, tmp_path)))
    summary = run_schemathesis(f"http://127.0.0.1:{stack.ports.rest}", config, tmp_path / "r.json")
    output = summary["output"]
    assert summary["returncode"] == 0, output
    assert summary["failures"] == [], output
    assert summary["errors"] == [], output
    assert {name: ops for name, ops in summary["warnings"].items() if ops} == {}, output
    assert summary["operations"]["tested"] == len(TESTED), output
    assert set(summary["valid_rates"]) == set(TESTED), output
    # Bounded, but not trivially small: every tested operation ran cases.
    assert summary["test_cases"]["generated"] >= 5 * len(TESTED), output
