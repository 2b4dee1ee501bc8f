"""The seed's REST API through a real Envoy: its curl examples verbatim (but the port), every
path and error, streamed multipart uploads with bounded server memory."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.outbox.document import status_document, to_document
from devstack import free_port
from devstack._stack import LocalStack
from tests.helpers import MiB, has_cyrillic, mp4_bytes, outbox_event, sha256_hex
from tests.integration import curl
from tests.integration.conftest import STACK_ADMIN_TOKEN
from tests.integration.envoy_front import envoy_error, envoy_front
from tests.integration.records import insert_records
from tests.integration.storage_checks import (
    object_keys,
    object_sha256,
    pending_uploads,
    wait_until,
)
from tools import gen_openapi

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def base(stack: LocalStack) -> str:
    return f"http://localhost:{stack.ports.rest}"


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "video.mp4"
    path.write_bytes(mp4_bytes(3 * MiB + 17, seed=3))
    return path


def with_s3(stack: LocalStack, action: Callable[[Minio], Awaitable[Any]]) -> Any:
    """Run one S3 action against the stack's MinIO (these tests are synchronous: they drive
    the stack's own processes with curl)."""

    async def run() -> Any:
        client = Minio(f"127.0.0.1:{stack.ports.minio}", "minioadmin", "minioadmin", secure=False)
        try:
            return await action(client)
        finally:
            await client.close_session()  # type: ignore[no-untyped-call]

    return asyncio.run(run())


def test_seed_curl_examples(base: str, video: Path, tmp_path: Path) -> None:
    # Загрузка видео
    status, body = curl.answer_sync(
        "-X", "POST", f"{base}/api/upload_video", "-F", f"file=@{video}", "-F", "bucket=videos"
    )
    assert status == 200
    assert body["status"] == "ok"
    event_id = body["event_id"]
    assert body["size_bytes"] == str(video.stat().st_size)  # int64 travels as a JSON string

    # Получение статуса
    status, body = curl.answer_sync(f"{base}/api/status/all")
    assert status == 200
    assert body["total"] >= 1
    mine = [op for op in body["operations"] if op["event_id"] == event_id]
    assert len(mine) == 1
    assert mine[0]["status"] in {"new", "sent"}
    assert {"event_id", "status", "created_at"} <= set(mine[0])

    # Получение результата
    status, body = curl.answer_sync(f"{base}/api/result_video/{event_id}")
    assert status == 200
    assert body["event_id"] == event_id
    assert body["status"] in {"new", "sent"}
    status, body = curl.answer_sync(f"{base}/api/result_video/{event_id}?bucket=videos")
    assert status == 200
    assert body["event_id"] == event_id
    assert "prediction" not in body


def test_status_all_lists_every_operation_as_the_original_did(base: str, stack: LocalStack) -> None:
    # More operations than one default page (100): an old client that counts or scans
    # `operations` must see them all, with no paging parameter.
    made = [outbox_event(str(uuid.uuid4())) for _ in range(150)]

    async def records(insert: bool) -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            f"mongodb://127.0.0.1:{stack.ports.mongo}/"
        )
        try:
            statuses = client["main_db"]["event_statuses"]
            if insert:
                await insert_records(statuses, [status_document(to_document(e)) for e in made])
            else:
                await statuses.delete_many({"_id": {"$in": [e.event_id for e in made]}})
        finally:
            await client.close()

    asyncio.run(records(insert=True))
    try:
        status, body = curl.answer_sync(f"{base}/api/status/all")
    finally:
        asyncio.run(records(insert=False))
    assert status == 200
    listed = {op["event_id"] for op in body["operations"]}
    assert {e.event_id for e in made} <= listed
    assert int(body["total"]) == len(body["operations"])
    assert body["next_page_token"] == ""


def test_raw_body_upload(base: str, video: Path, stack: LocalStack) -> None:
    status, body = curl.answer_sync(
        "-X",
        "POST",
        f"{base}/api/upload_video?filename=raw.mp4",
        "--data-binary",
        f"@{video}",
        "-H",
        "Content-Type: video/mp4",
    )
    assert status == 200
    assert body["sha256"] == sha256_hex(video.read_bytes())
    status, one = curl.answer_sync(f"{base}/api/status/{body['event_id']}")
    assert status == 200
    assert one["operation"]["filename"] == "raw.mp4"


def test_result_becomes_ready_and_watch_streams_ndjson(
    base: str, video: Path, stack: LocalStack
) -> None:
    status, body = curl.answer_sync(
        "-X", "POST", f"{base}/api/upload_video", "-F", f"file=@{video}"
    )
    event_id, video_id = body["event_id"], body["video_id"]
    watcher = subprocess.Popen(
        curl.argv("-N", f"{base}/api/status/{event_id}/watch"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())
        assert first["event_id"] == event_id
        prediction = {"objects": [{"label": "собака", "score": 0.8}]}
        raw = json.dumps(prediction).encode()
        with_s3(
            stack,
            lambda s3: s3.put_object(
                "videos", f"output/{video_id}.json", io.BytesIO(raw), len(raw)
            ),
        )
        statuses = [first["status"]] + [json.loads(line)["status"] for line in watcher.stdout]
        assert statuses[-1] == "ready"
        assert watcher.wait(timeout=30) == 0
    finally:
        watcher.kill()
        watcher.wait()
        if watcher.stdout is not None:
            watcher.stdout.close()
    status, body = curl.answer_sync(f"{base}/api/result_video/{event_id}")
    assert (status, body["status"], body["prediction"]) == (200, "ready", prediction)
    # The original service's `?bucket=`: the event's own bucket, or 404 for another one.
    status, body = curl.answer_sync(f"{base}/api/result_video/{event_id}?bucket=videos")
    assert (status, body["status"], body["prediction"]) == (200, "ready", prediction)
    status, body = curl.answer_sync(f"{base}/api/result_video/{event_id}?bucket=archive")
    assert (status, body["details"][0]["reason"]) == (404, "EVENT_NOT_IN_BUCKET")
    assert has_cyrillic(body["message"])


def test_the_stacks_relay_marks_an_upload_sent(base: str, video: Path) -> None:
    """The whole pipeline of `make run`: REST upload -> outbox -> checkout-relay -> Kafka ->
    the status record `sent`, seen through the REST status path."""
    _, uploaded = curl.answer_sync("-X", "POST", f"{base}/api/upload_video", "-F", f"file=@{video}")
    event_id = uploaded["event_id"]

    async def sent() -> bool:
        status, body = await curl.answer(f"{base}/api/status/{event_id}")
        assert status == 200
        return bool(body["operation"]["status"] == "sent")

    asyncio.run(wait_until(sent, timeout_s=60, what="the relay to mark the upload sent"))
    _, listed = curl.answer_sync(f"{base}/api/status/all?status=sent")
    assert event_id in [o["event_id"] for o in listed["operations"]]


def test_request_and_cleanup(base: str, video: Path) -> None:
    _, uploaded = curl.answer_sync("-X", "POST", f"{base}/api/upload_video", "-F", f"file=@{video}")
    status, body = curl.answer_sync(
        "-X",
        "POST",
        f"{base}/api/request",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps({"video_id": uploaded["video_id"]}),
    )
    assert status == 200
    assert body["status"] == "ok"
    assert body["video_id"] == uploaded["video_id"]

    status, body = curl.answer_sync("-X", "DELETE", f"{base}/api/cleanup/all")
    assert status == 401
    assert body["details"][0]["reason"] == "UNAUTHENTICATED"
    status, body = curl.answer_sync(
        "-X",
        "DELETE",
        f"{base}/api/cleanup/all",
        "-H",
        f"Authorization: Bearer {STACK_ADMIN_TOKEN}",
    )
    assert status == 200
    assert body["status"] == "ok"
    assert body["deleted_events"] >= 2
    assert curl.answer_sync(f"{base}/api/status/all")[1]["total"] == 0


@pytest.mark.parametrize(
    ("args", "http_status", "reason"),
    [
        (["-X", "POST", "/api/upload_video", "-F", "file=@{text}"], 400, "NOT_MP4"),
        (["-X", "POST", "/api/upload_video", "-F", "bucket=videos"], 400, "MISSING_FILE"),
        (
            ["-X", "POST", "/api/upload_video", "-F", "bucket=secret", "-F", "file=@{video}"],
            400,
            "BUCKET_NOT_ALLOWED",
        ),
        (
            ["-X", "POST", "/api/upload_video", "-F", "file=@{video}", "-F", "bucket=secret"],
            400,
            "BUCKET_NOT_ALLOWED",
        ),
        (  # several parts are stored before the late field: the multipart upload is aborted
            ["-X", "POST", "/api/upload_video", "-F", "file=@{big}", "-F", "bucket=secret"],
            400,
            "BUCKET_NOT_ALLOWED",
        ),
        (["/api/status/12345678-1234-4234-8234-123456789012"], 404, "EVENT_NOT_FOUND"),
        (["/api/result_video/not-an-id"], 400, "INVALID_EVENT_ID"),
        (["/api/status/all?status=done"], 400, "INVALID_STATUS"),
        (
            [
                "-X",
                "POST",
                "/api/request",
                "-d",
                '{"video_id": "12345678-1234-4234-8234-123456789012"}',
            ],
            404,
            "VIDEO_NOT_FOUND",
        ),
    ],
)
def test_errors_are_json_with_russian_messages(
    base: str,
    stack: LocalStack,
    video: Path,
    tmp_path: Path,
    args: list[str],
    http_status: int,
    reason: str,
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("это не видео\n" * 1000)
    big = tmp_path / "big.mp4"
    if "file=@{big}" in args:
        big.write_bytes(mp4_bytes(40 * MiB, seed=5))
    filled = [
        a.format(text=text, video=video, big=big) if "{" in a and "@" in a else a for a in args
    ]
    filled = [f"{base}{a}" if a.startswith("/api") else a for a in filled]
    before = stack_contents(stack)
    status, body = curl.answer_sync(*filled)
    assert status == http_status
    assert has_cyrillic(body["message"])
    assert body["details"][0]["reason"] == reason
    # Nothing of a refused request is left in the stack's MinIO or database.
    assert_unchanged(stack, before)


@dataclass(frozen=True)
class Contents:
    """What the stack's backends hold: objects under input/, open multipart uploads, outbox
    messages and status records (the tests run one at a time: only a request of the test
    itself can change these)."""

    objects: frozenset[str]
    pending: int
    outbox: frozenset[str]
    statuses: frozenset[str]


def stack_contents(stack: LocalStack) -> Contents:
    async def objects(s3: Minio) -> tuple[frozenset[str], int]:
        return frozenset(await object_keys(s3, "videos")), await pending_uploads(s3, "videos")

    async def documents() -> tuple[frozenset[str], frozenset[str]]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            f"mongodb://127.0.0.1:{stack.ports.mongo}/"
        )
        try:
            database = client["main_db"]
            outbox = await database["outbox"].distinct("_id")
            statuses = await database["event_statuses"].distinct("_id")
        finally:
            await client.close()
        return frozenset(map(str, outbox)), frozenset(map(str, statuses))

    keys, pending = with_s3(stack, objects)
    outbox, statuses = asyncio.run(documents())
    return Contents(keys, pending, outbox, statuses)


def assert_unchanged(stack: LocalStack, before: Contents) -> None:
    """No new object, outbox message or status record, and no open multipart upload (an
    abort may still be under way when the error is answered: waited for)."""

    async def settled() -> bool:
        return (await asyncio.to_thread(stack_contents, stack)).pending == 0

    asyncio.run(wait_until(settled, timeout_s=30, what="no open multipart upload"))
    after = stack_contents(stack)
    assert after.objects <= before.objects, after.objects - before.objects
    assert after.outbox <= before.outbox, after.outbox - before.outbox
    assert after.statuses <= before.statuses, after.statuses - before.statuses


@pytest.mark.parametrize(
    ("args", "http_status", "code", "reason"),
    [
        (["/api/unknown"], 404, 5, "ROUTE_NOT_FOUND"),
        (["-X", "DELETE", "/api/status/all"], 404, 5, "ROUTE_NOT_FOUND"),
        (["-X", "POST", "/api/request", "-d", "{not json"], 400, 3, "INVALID_REQUEST"),
        (["/api/status/all?colour=red"], 400, 3, "INVALID_REQUEST"),
        (["-X", "POST", "/api/request", "-d", "video_id=1"], 400, 3, "INVALID_REQUEST"),
    ],
)
def test_envoy_own_errors_have_the_one_shape(
    base: str, args: list[str], http_status: int, code: int, reason: str
) -> None:
    filled = [f"{base}{a}" if a.startswith("/api") else a for a in args]
    status, body = curl.answer_sync(*filled)
    assert status == http_status
    assert envoy_error(body) == (code, reason)


def test_headers_over_envoys_limit_are_431_in_the_one_shape(base: str) -> None:
    """Envoy's limit on request headers (60 KiB by default) answers before the service."""
    status, body = curl.answer_sync("-H", f"X-Padding: {'a' * 70 * 1024}", f"{base}/api/status/all")
    assert status == 431
    assert envoy_error(body) == (3, "HEADERS_TOO_LARGE")
    assert body["message"] == "Заголовки запроса слишком велики"


def test_an_unreachable_service_is_503_in_the_one_shape(tmp_path: Path) -> None:
    dead = free_port()  # nothing serves it
    with envoy_front(tmp_path, [dead]) as front:
        status, body = curl.answer_sync(f"{front.url}/api/status/all")
        assert status == 503
        assert envoy_error(body) == (14, "UPSTREAM_UNAVAILABLE")
        assert "connection" in body["details"][0]["metadata"]["envoy_details"]
        # A native gRPC client through the same Envoy keeps its plain gRPC status.
        grpc_status = curl.run_sync(
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "@/dev/null",
            f"{front.url}/checkout.v1.CheckoutService/Health",
        )
        assert "grpc-status: 14" in grpc_status.head
        assert "google.rpc.ErrorInfo" not in grpc_status.head


def test_envoy_routes_around_a_dead_server(tmp_path: Path, stack: LocalStack, video: Path) -> None:
    """Two servers in Envoy's cluster, one of them never up: its gRPC health checks fail, so
    it leaves the rotation, and every read and upload through Envoy reaches the live one."""
    dead = free_port()
    with envoy_front(tmp_path, [dead, stack.ports.grpc]) as front:
        base = front.url
        # Round robin alone would send every other call to the dead server.
        for _ in range(6):
            status, body = curl.answer_sync(f"{base}/api/status/all")
            assert status == 200, body
        for _ in range(2):
            status, body = curl.answer_sync(
                "-X", "POST", f"{base}/api/upload_video", "-F", f"file=@{video}"
            )
            assert status == 200, body
            assert body["sha256"] == sha256_hex(video.read_bytes())
        reply = curl.run_sync(f"{front.admin_url}/clusters")
        assert reply.exit_code == 0, reply.stderr
        clusters = reply.text
        flags = {
            line.split("::")[1]: line.rpartition("::")[2]
            for line in clusters.splitlines()
            if line.startswith("checkout_grpc::") and "::health_flags::" in line
        }
        assert flags[f"127.0.0.1:{stack.ports.grpc}"] == "healthy"
        assert "failed_active_hc" in flags[f"127.0.0.1:{dead}"]


def test_large_multipart_upload_streams_with_bounded_memory(
    base: str, tmp_path: Path, stack: LocalStack
) -> None:
    path = tmp_path / "big.mp4"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(300):  # 300 MiB: 37 parts of 8 MiB
            block = (
                mp4_bytes(MiB, seed=i)
                if i == 0
                else hashlib.shake_256(bytes([i % 256])).digest(MiB)
            )
            digest.update(block)
            f.write(block)
    pid = stack.server.pid
    assert pid is not None
    before = _rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak

    status, body = curl.answer_sync(
        "-X", "POST", f"{base}/api/upload_video", "-F", f"file=@{path}", timeout_s=240
    )

    assert status == 200
    growth_mib = (_rss_kib(pid, "VmHWM") - before) / 1024
    print(f"300 MiB REST upload: server peak RSS growth {growth_mib:.1f} MiB")
    assert growth_mib < 100
    stored = with_s3(stack, lambda s3: object_sha256(s3, "videos", body["object_key"]))
    assert stored == (300 * MiB, digest.hexdigest())


def test_rest_and_grpc_uploads_store_identical_objects(
    base: str, video: Path, stack: LocalStack
) -> None:
    _, rest = curl.answer_sync("-X", "POST", f"{base}/api/upload_video", "-F", f"file=@{video}")
    grpc_upload = _grpc_upload(stack, video)
    assert rest["sha256"] == grpc_upload["sha256"] == sha256_hex(video.read_bytes())
    keys = [rest["object_key"], grpc_upload["object_key"]]

    async def both(s3: Minio) -> list[tuple[int, str]]:
        return [await object_sha256(s3, "videos", key) for key in keys]

    stored = with_s3(stack, both)
    assert stored[0] == stored[1]


def _grpc_upload(stack: LocalStack, video: Path) -> dict[str, Any]:
    data = video.read_bytes()
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.grpc}") as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        messages = [pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename=video.name))]
        messages += [
            pb.UploadVideoRequest(chunk=data[i : i + MiB]) for i in range(0, len(data), MiB)
        ]
        response = stub.UploadVideo(iter(messages), timeout=60)
    return {"sha256": response.sha256, "object_key": response.object_key}


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_openapi_document_is_served_and_up_to_date(base: str, tmp_path: Path) -> None:
    result = curl.run_sync(f"{base}/api/openapi.yaml")
    assert result.exit_code == 0, result.stderr
    headers, body = result.head, result.text
    assert " 200" in headers.splitlines()[0]
    assert "application/yaml" in headers
    checked_in = (Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text()
    assert body == checked_in
    for path in ("/api/upload_video:", "/api/status/all:", "/api/result_video/{event_id}:"):
        assert path in checked_in
    # Regenerating from the protos gives the checked-in document (else run `make openapi`).
    assert gen_openapi.generate() == checked_in
