"""The SDK and the CLI for statuses, watches, results, re-requests and cleanup, against the
real server: an event becomes `ready` when a result JSON appears at `output/{video_id}.json`
in its bucket (the detection runner's contract), written here with the test's S3 client."""

from __future__ import annotations

import asyncio
import io
import json
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
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RetryPolicy,
    StatusUpdate,
    Unauthenticated,
    Upload,
)
from checkout_client.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from tests.helpers import MiB, mp4_bytes
from tests.integration.console import checkout
from tests.integration.storage_checks import object_keys, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Collection = AsyncCollection[dict[str, Any]]
PREDICTION = {"objects": [{"label": "cat", "score": 0.97, "box": [1, 2, 30, 40]}], "frames": 12}


@pytest.fixture
async def client(app: App) -> AsyncIterator[AsyncCheckoutClient]:
    policy = RetryPolicy(attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1)
    async with AsyncCheckoutClient(f"127.0.0.1:{app.port}", retry=policy) as client:
        yield client


async def upload(client: AsyncCheckoutClient, name: str = "clip.mp4", seed: int = 0) -> Upload:
    return await client.upload(io.BytesIO(mp4_bytes(MiB // 2, seed=seed)), filename=name)


async def write_result(s3: Minio, bucket: str, video_id: str) -> None:
    body = json.dumps(PREDICTION).encode()
    await s3.put_object(
        bucket, f"output/{video_id}.json", io.BytesIO(body), len(body), "application/json"
    )


# --- SDK --------------------------------------------------------------------------------------


async def test_status_of_a_new_upload(client: AsyncCheckoutClient, bucket: str) -> None:
    uploaded = await upload(client, "one.mp4")
    operation = await client.status(uploaded.event_id)
    assert operation.event_id == uploaded.event_id
    assert operation.video_id == uploaded.video_id
    assert operation.status == "new"
    assert (operation.bucket, operation.object_key) == (bucket, uploaded.object_key)
    assert (operation.filename, operation.size_bytes) == ("one.mp4", uploaded.size_bytes)
    assert operation.created_at is not None
    assert operation.error == ""


@pytest.mark.parametrize(
    ("event_id", "error", "code", "reason"),
    [
        (str(uuid.UUID(int=7)), NotFound, grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND"),
        ("not-an-id", InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT_ID"),
    ],
)
async def test_unknown_and_malformed_event_ids(
    client: AsyncCheckoutClient,
    event_id: str,
    error: type[Exception],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    for call in (client.status, client.result):
        with pytest.raises(error) as caught:
            await call(event_id)
        assert (caught.value.code, caught.value.reason) == (code, reason)  # type: ignore[attr-defined]


async def test_list_statuses_iterates_every_page_newest_first(client: AsyncCheckoutClient) -> None:
    uploaded = [await upload(client, f"v{i}.mp4", seed=i) for i in range(5)]

    listed = [o async for o in client.list_statuses(page_size=2)]

    assert [o.event_id for o in listed] == [u.event_id for u in reversed(uploaded)]
    first = await client.list_page(page_size=2)
    assert (len(first.operations), first.total) == (2, 5)
    assert first.next_page_token
    assert [o async for o in client.list_statuses(status="ready")] == []


async def test_watch_follows_to_ready_then_result_has_the_prediction(
    client: AsyncCheckoutClient, s3: Minio, bucket: str
) -> None:
    uploaded = await upload(client)
    before = await client.result(uploaded.event_id)
    assert (before.status, before.prediction) == ("new", None)

    updates: list[StatusUpdate] = []
    first_seen = asyncio.Event()

    async def follow() -> None:
        async for update in client.watch(uploaded.event_id):
            updates.append(update)
            first_seen.set()

    watching = asyncio.create_task(follow())
    await asyncio.wait_for(first_seen.wait(), 10)
    assert updates[0].status == "new"
    await write_result(s3, bucket, uploaded.video_id)
    await asyncio.wait_for(watching, 30)  # the watch ends by itself after `ready`

    assert updates[-1].status == "ready"
    assert updates[-1].terminal
    assert all(u.event_id == uploaded.event_id for u in updates)
    result = await client.result(uploaded.event_id)
    assert result.status == "ready"
    assert result.prediction == PREDICTION  # numbers come back as floats; 12 == 12.0


async def test_sync_client_watches_and_lists(app: App, s3: Minio, bucket: str) -> None:
    address = f"127.0.0.1:{app.port}"

    # The blocking client runs its own event loop, so it gets a thread of its own here.
    def upload_blocking() -> Upload:
        with CheckoutClient(address) as client:
            return client.upload(io.BytesIO(mp4_bytes(1000)), filename="s.mp4")

    def watch_and_list(event_id: str) -> tuple[list[str], list[str]]:
        with CheckoutClient(address) as client:
            statuses = [u.status for u in client.watch(event_id)]
            return statuses, [o.event_id for o in client.list_statuses()]

    uploaded = await asyncio.to_thread(upload_blocking)
    await write_result(s3, bucket, uploaded.video_id)
    statuses, listed = await asyncio.to_thread(watch_and_list, uploaded.event_id)
    assert statuses[-1] == "ready"
    assert listed == [uploaded.event_id]


async def test_request_makes_a_new_event_for_a_stored_video(client: AsyncCheckoutClient) -> None:
    uploaded = await upload(client)
    again = await client.request(uploaded.video_id)
    assert again.video_id == uploaded.video_id
    assert again.event_id != uploaded.event_id
    assert (await client.status(again.event_id)).status == "new"

    with pytest.raises(NotFound) as caught:
        await client.request(str(uuid.uuid4()))
    assert caught.value.reason == "VIDEO_NOT_FOUND"


@pytest.fixture
async def admin_app(settings: ServerSettings) -> AsyncIterator[App]:
    app = await create_app(settings.replace(admin_token="s3cret"))
    await app.start()
    yield app
    await app.stop(grace_s=1.0)


def own_plaintext_channel(app: App) -> grpc.aio.Channel:
    """A channel built by the test, not the SDK: the SDK sends an admin token over a
    plaintext channel only when the caller built that channel."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")


async def test_cleanup_needs_the_admin_token(
    admin_app: App, s3: Minio, bucket: str, outbox_collection: Collection
) -> None:
    async with (
        own_plaintext_channel(admin_app) as channel,
        AsyncCheckoutClient(channel=channel) as client,
    ):
        uploaded = await upload(client)
        with pytest.raises(Unauthenticated) as caught:
            await client.cleanup(admin_token="wrong")
        assert caught.value.reason == "UNAUTHENTICATED"

        report = await client.cleanup(admin_token="s3cret")

    assert (report.deleted_objects, report.deleted_events) == (1, 1)
    assert await object_keys(s3, bucket) == []
    assert await outbox_collection.count_documents({"_id": uploaded.event_id}) == 0


async def test_cleanup_is_disabled_without_a_server_token(app: App) -> None:
    async with (
        own_plaintext_channel(app) as channel,
        AsyncCheckoutClient(channel=channel) as client,
    ):
        with pytest.raises(PermissionDenied) as caught:
            await client.cleanup(admin_token="anything")
    assert caught.value.reason == "CLEANUP_DISABLED"


async def test_the_sdk_sends_no_admin_token_over_its_own_plaintext_channel(
    admin_app: App, s3: Minio, bucket: str
) -> None:
    async with AsyncCheckoutClient(f"127.0.0.1:{admin_app.port}") as client:
        uploaded = await upload(client)
        with pytest.raises(ValueError, match="TLS"):
            await client.cleanup(admin_token="s3cret")
    # Had it been sent, the right token would have removed everything.
    assert await object_keys(s3, bucket) == [uploaded.object_key]


# --- CLI --------------------------------------------------------------------------------------


async def test_cli_status_table_and_json(app: App, client: AsyncCheckoutClient) -> None:
    address = f"127.0.0.1:{app.port}"
    uploaded = [await upload(client, f"file{i}.mp4", seed=i) for i in range(3)]

    code, table, err = await checkout("status", address=address)
    assert code == EXIT_OK, err
    rows = [
        line for line in table.splitlines() if line.strip().startswith(uploaded[0].event_id[:8])
    ]
    assert len(rows) == 1
    assert all(u.event_id in table for u in uploaded)
    assert "3 of 3" in table

    code, out, _ = await checkout("status", "--json", "--limit", "2", address=address)
    listed = json.loads(out)
    assert [o["event_id"] for o in listed] == [uploaded[2].event_id, uploaded[1].event_id]

    code, out, _ = await checkout("status", uploaded[0].event_id, "--json", address=address)
    assert code == EXIT_OK
    one = json.loads(out)
    assert (one["event_id"], one["status"], one["filename"]) == (
        uploaded[0].event_id,
        "new",
        "file0.mp4",
    )


async def test_cli_unknown_event_exits_not_found(app: App) -> None:
    code, out, err = await checkout("status", str(uuid.uuid4()), address=f"127.0.0.1:{app.port}")
    assert code == EXIT_NOT_FOUND
    assert out == ""
    assert err.startswith("checkout: ошибка: Событие не найдено")
    assert err.endswith("(EVENT_NOT_FOUND)\n")


async def test_cli_upload_watch_json_waits_for_the_result(
    app: App, s3: Minio, bucket: str, tmp_path: Path, outbox_collection: Collection
) -> None:
    (tmp_path / "w.mp4").write_bytes(mp4_bytes(MiB))
    command = asyncio.create_task(
        checkout(
            "upload", str(tmp_path / "w.mp4"), "--watch", "--json", address=f"127.0.0.1:{app.port}"
        )
    )

    async def uploaded() -> bool:
        return await outbox_collection.count_documents({}) == 1

    await wait_until(uploaded, what="the CLI's upload")
    document = await outbox_collection.find_one({})
    assert document is not None
    await write_result(s3, bucket, document["video_id"])
    code, out, err = await command

    assert code == EXIT_OK, err
    record = json.loads(out)
    assert record["upload"]["event_id"] == document["_id"]
    assert record["status"]["status"] == "ready"
    assert record["result"]["prediction"] == PREDICTION


async def test_cli_watch_prints_json_lines_and_result(
    app: App, client: AsyncCheckoutClient, s3: Minio, bucket: str
) -> None:
    address = f"127.0.0.1:{app.port}"
    uploaded = await upload(client)
    await write_result(s3, bucket, uploaded.video_id)

    code, out, err = await checkout("watch", uploaded.event_id, "--json", address=address)
    assert code == EXIT_OK, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[-1]["status"] == "ready"

    code, out, _ = await checkout("result", uploaded.event_id, "--json", address=address)
    assert code == EXIT_OK
    assert json.loads(out)["prediction"] == PREDICTION

    code, out, _ = await checkout("request", uploaded.video_id, "--json", address=address)
    assert code == EXIT_OK
    assert json.loads(out)["video_id"] == uploaded.video_id


@pytest.mark.parametrize(
    ("args", "env"),
    [([], {"CHECKOUT_ADMIN_TOKEN": "s3cret"}), (["--admin-token", "s3cret"], {})],
    ids=["env", "flag"],
)
async def test_cli_never_sends_the_admin_token_in_clear_text(
    admin_app: App,
    s3: Minio,
    bucket: str,
    outbox_collection: Collection,
    args: list[str],
    env: dict[str, str],
) -> None:
    # The server would take the token (plaintext, ADMIN_TOKEN set): the CLI refuses to send
    # it, and everything stays. Over TLS it goes (test_tls.py).
    address = f"127.0.0.1:{admin_app.port}"
    async with AsyncCheckoutClient(address) as client:
        uploaded = await upload(client)
    code, out, err = await checkout("cleanup", "--yes", *args, address=address, env=env)
    assert (code, out) == (EXIT_USAGE, "")
    assert err.endswith("(ADMIN_TOKEN_NEEDS_TLS)\n")
    assert await object_keys(s3, bucket) == [uploaded.object_key]
    assert await outbox_collection.count_documents({"_id": uploaded.event_id}) == 1
