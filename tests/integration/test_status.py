"""Statuses, results, re-requests and cleanup against real FerretDB and MinIO."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.domain import OutboxEvent
from checkout_server.outbox.document import HOUR, status_document, to_document
from checkout_server.status.service import LIST_ALL_MAX
from checkout_server.wiring.server import App, create_app
from tests.helpers import error_details, has_cyrillic, mp4_bytes, outbox_event, wait_until
from tests.integration.apps import started_app
from tests.integration.records import insert_records
from tests.integration.resumable_helpers import metadata as resumable_metadata
from tests.integration.resumable_helpers import write_messages
from tests.integration.storage_checks import object_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Collection = AsyncCollection[dict[str, Any]]
if TYPE_CHECKING:  # the async stub type exists only in the generated type stubs
    Stub = pb_grpc.CheckoutServiceAsyncStub


async def upload(stub: Stub, size: int = 2000, **meta: Any) -> pb.UploadVideoResponse:
    messages = [
        pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="v.mp4", **meta)),
        pb.UploadVideoRequest(chunk=mp4_bytes(size)),
    ]
    return await stub.UploadVideo(iter(messages))


async def write_result(s3: Minio, bucket: str, video_id: str, body: bytes) -> None:
    """Plays the detection runner: its contract is a JSON file at output/{video_id}.json."""
    await s3.put_object(
        bucket, f"output/{video_id}.json", io.BytesIO(body), len(body), "application/json"
    )


async def expect_error(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    got_code, got_reason, message = error_details(caught.value)
    assert (got_code, got_reason) == (code, reason)
    assert has_cyrillic(message)


async def test_get_status_of_a_new_upload(stub: Stub) -> None:
    uploaded = await upload(stub)
    response = await stub.GetStatus(pb.GetStatusRequest(event_id=uploaded.event_id))
    op = response.operation
    assert (op.event_id, op.status, op.video_id) == (uploaded.event_id, "new", uploaded.video_id)
    assert op.object_key == uploaded.object_key
    assert op.created_at.ToDatetime(UTC) <= datetime.now(UTC)


async def test_get_status_errors(stub: Stub) -> None:
    await expect_error(
        stub.GetStatus(pb.GetStatusRequest(event_id="12345678-1234-4234-8234-123456789012")),
        grpc.StatusCode.NOT_FOUND,
        "EVENT_NOT_FOUND",
    )
    await expect_error(
        stub.GetStatus(pb.GetStatusRequest(event_id="not-a-uuid")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EVENT_ID",
    )


async def test_list_is_newest_first_and_pages_without_gaps(stub: Stub) -> None:
    uploaded = [(await upload(stub)).event_id for _ in range(5)]

    first = await stub.ListStatuses(pb.ListStatusesRequest(page_size=2))
    assert first.total == 5
    assert [o.event_id for o in first.operations] == uploaded[::-1][:2]
    seen = [o.event_id for o in first.operations]
    token = first.next_page_token
    while token:
        page = await stub.ListStatuses(pb.ListStatusesRequest(page_size=2, page_token=token))
        seen += [o.event_id for o in page.operations]
        token = page.next_page_token
    assert seen == uploaded[::-1]

    everything = await stub.ListStatuses(pb.ListStatusesRequest())
    assert [o.event_id for o in everything.operations] == uploaded[::-1]
    assert everything.next_page_token == ""
    assert {o.status for o in everything.operations} == {"new"}


async def many_records(
    settings: ServerSettings, status_collection: Collection, count: int
) -> list[OutboxEvent]:
    """`count` status records written directly (as the relay's healing writes them), newest
    first."""
    now = datetime.now(UTC)
    made = [
        outbox_event(
            str(uuid.UUID(int=i + 1)),
            at=now - timedelta(milliseconds=i),
            bucket=settings.default_bucket,
            filename="clip.mp4",
        )
        for i in range(count)
    ]
    for start in range(0, len(made), 1000):
        batch = [status_document(to_document(e)) for e in made[start : start + 1000]]
        await insert_records(status_collection, batch)
    return made


async def test_list_without_paging_gives_everything_up_to_ten_thousand(
    settings: ServerSettings, status_collection: Collection
) -> None:
    # FerretDB scans and sorts all 10,050 records for each listing (seconds here,
    # docs/architecture.md, "Known limitations"), hence a database timeout of its own.
    made = await many_records(settings, status_collection, LIST_ALL_MAX + 50)

    async with (
        started_app(settings, mongo_timeout_ms=30_000) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.CheckoutServiceStub(channel)
        everything = await stub.ListStatuses(pb.ListStatusesRequest())
        rest = await stub.ListStatuses(
            pb.ListStatusesRequest(page_token=everything.next_page_token)
        )
    assert everything.total == LIST_ALL_MAX + 50
    assert len(everything.operations) == LIST_ALL_MAX
    assert [o.event_id for o in everything.operations[:2]] == [made[0].event_id, made[1].event_id]
    assert everything.next_page_token
    assert [o.event_id for o in rest.operations] == [e.event_id for e in made[LIST_ALL_MAX:]]
    assert rest.next_page_token == ""


async def test_a_listing_out_of_time_ends_its_page_early_and_goes_on_after_it(
    settings: ServerSettings, status_collection: Collection
) -> None:
    now = datetime.now(UTC)
    made = [
        outbox_event(str(uuid.UUID(int=i + 1)), at=now - timedelta(hours=i), bucket="videos")
        for i in range(3)
    ]
    await insert_records(status_collection, [status_document(to_document(e)) for e in made])

    pages: list[list[str]] = []
    async with (
        started_app(settings, list_page_budget_s=1e-9) as app,  # an hour per page
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.CheckoutServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListStatuses(pb.ListStatusesRequest(page_size=10, page_token=token))
            pages.append([o.event_id for o in page.operations])
            assert page.total == 3
            token = page.next_page_token
            if not token:
                break

    assert pages == [[e.event_id] for e in made]


async def test_a_server_lists_the_records_an_older_server_wrote(
    settings: ServerSettings, status_collection: Collection
) -> None:
    old = status_document(to_document(outbox_event(str(uuid.uuid4()))))
    del old[HOUR]  # neither an hour nor a registered one
    await status_collection.insert_one(old)

    async with (
        started_app(settings) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.CheckoutServiceStub(channel)

        async def listed() -> bool:
            page = await stub.ListStatuses(pb.ListStatusesRequest())
            return [o.event_id for o in page.operations] == [old["_id"]]

        await wait_until(listed, what="the older record listed")


async def test_a_listing_slower_than_the_database_timeout_is_no_outage(
    settings: ServerSettings, status_collection: Collection
) -> None:
    """A listing FerretDB takes seconds to sort, with a database timeout far below that, is
    answered DEADLINE_EXCEEDED DATABASE_TIMEOUT ("did not finish in time"), not UNAVAILABLE
    DATABASE_UNAVAILABLE ("unreachable"): the database answers a look-up meanwhile."""
    made = await many_records(settings, status_collection, LIST_ALL_MAX + 50)
    async with (
        started_app(settings, mongo_timeout_ms=200) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.CheckoutServiceStub(channel)
        await expect_error(
            stub.ListStatuses(pb.ListStatusesRequest()),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DATABASE_TIMEOUT",
        )
        found = await stub.GetStatus(pb.GetStatusRequest(event_id=made[0].event_id))
    assert found.operation.event_id == made[0].event_id


async def test_list_filters_by_api_status(stub: Stub, s3: Minio, bucket: str) -> None:
    done, waiting = await upload(stub), await upload(stub)
    await write_result(s3, bucket, done.video_id, b'{"objects": []}')
    await stub.GetStatus(pb.GetStatusRequest(event_id=done.event_id))  # observes the result

    ready = await stub.ListStatuses(pb.ListStatusesRequest(status="ready"))
    new = await stub.ListStatuses(pb.ListStatusesRequest(status="new"))
    assert [o.event_id for o in ready.operations] == [done.event_id]
    assert [o.event_id for o in new.operations] == [waiting.event_id]
    assert (ready.total, new.total) == (1, 1)


async def test_list_errors(stub: Stub) -> None:
    await expect_error(
        stub.ListStatuses(pb.ListStatusesRequest(status="done")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_STATUS",
    )
    # A token made to look like the server's (base64 JSON of milliseconds and an id), with a
    # time no datetime holds: refused like any foreign token, never INTERNAL.
    crafted = base64.urlsafe_b64encode(b'[99999999999999999999,"x"]').decode()
    for token in ("garbage!", crafted):
        await expect_error(
            stub.ListStatuses(pb.ListStatusesRequest(page_token=token)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        )
    await expect_error(
        stub.ListStatuses(pb.ListStatusesRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_SIZE",
    )


async def test_result_before_and_after_ready(stub: Stub, s3: Minio, bucket: str) -> None:
    uploaded = await upload(stub)
    pending = await stub.GetResult(pb.GetResultRequest(event_id=uploaded.event_id))
    assert pending.status == "new"
    assert not pending.HasField("prediction")

    prediction = {"objects": [{"label": "кошка", "score": 0.9, "box": [1, 2, 3, 4]}], "frames": 3}
    await write_result(s3, bucket, uploaded.video_id, json.dumps(prediction).encode())
    ready = await stub.GetResult(pb.GetResultRequest(event_id=uploaded.event_id))
    assert ready.status == "ready"
    assert ready.video_id == uploaded.video_id
    assert MessageToDict(ready.prediction) == prediction


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2, 3]", b"\xff\xfe"])
async def test_result_that_is_not_a_json_object(
    stub: Stub, s3: Minio, bucket: str, body: bytes
) -> None:
    uploaded = await upload(stub)
    await write_result(s3, bucket, uploaded.video_id, body)
    await expect_error(
        stub.GetResult(pb.GetResultRequest(event_id=uploaded.event_id)),
        grpc.StatusCode.DATA_LOSS,
        "RESULT_INVALID",
    )


async def test_result_errors(stub: Stub) -> None:
    await expect_error(
        stub.GetResult(pb.GetResultRequest(event_id="12345678-1234-4234-8234-123456789012")),
        grpc.StatusCode.NOT_FOUND,
        "EVENT_NOT_FOUND",
    )
    await expect_error(
        stub.GetResult(pb.GetResultRequest(event_id="../etc/passwd")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EVENT_ID",
    )


async def test_create_request_for_a_stored_video(stub: Stub, outbox_collection: Collection) -> None:
    uploaded = await upload(stub)
    response = await stub.CreateRequest(pb.CreateRequestRequest(video_id=uploaded.video_id))
    assert response.status == "ok"
    assert response.video_id == uploaded.video_id
    assert response.event_id != uploaded.event_id
    document = await outbox_collection.find_one({"_id": response.event_id})
    assert document is not None
    assert document["status"] == "new"
    assert document["payload"]["object_key"] == uploaded.object_key
    assert document["payload"]["size_bytes"] == uploaded.size_bytes


async def test_create_request_errors(stub: Stub) -> None:
    await expect_error(
        stub.CreateRequest(
            pb.CreateRequestRequest(video_id="12345678-1234-4234-8234-123456789012")
        ),
        grpc.StatusCode.NOT_FOUND,
        "VIDEO_NOT_FOUND",
    )
    await expect_error(
        stub.CreateRequest(pb.CreateRequestRequest(video_id="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_VIDEO_ID",
    )
    await expect_error(
        stub.CreateRequest(
            pb.CreateRequestRequest(
                video_id="12345678-1234-4234-8234-123456789012", bucket="elsewhere"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BUCKET_NOT_ALLOWED",
    )


async def test_cleanup_is_disabled_without_a_token(stub: Stub) -> None:
    await expect_error(
        stub.Cleanup(pb.CleanupRequest(), metadata=(("authorization", "Bearer anything"),)),
        grpc.StatusCode.PERMISSION_DENIED,
        "CLEANUP_DISABLED",
    )


@pytest.fixture
async def admin_app(settings: ServerSettings) -> AsyncIterator[App]:
    app = await create_app(settings.replace(admin_token="s3cret-token"))
    await app.start()
    yield app
    await app.stop(grace_s=1)


async def test_cleanup_needs_the_token_and_wipes_the_service_data(
    admin_app: App,
    s3: Minio,
    bucket: str,
    other_bucket: str,
    outbox_collection: Collection,
    status_collection: Collection,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_app.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        first = await upload(stub)
        await upload(stub, bucket=other_bucket)
        await write_result(s3, bucket, first.video_id, b"{}")
        await s3.put_object(bucket, "keep/me.txt", io.BytesIO(b"x"), 1)

        for metadata in [
            (),
            (("authorization", "Bearer wrong"),),
            (("authorization", "s3cret-token"),),
        ]:
            await expect_error(
                stub.Cleanup(pb.CleanupRequest(), metadata=metadata),
                grpc.StatusCode.UNAUTHENTICATED,
                "UNAUTHENTICATED",
            )
        assert await outbox_collection.count_documents({}) == 2
        assert await status_collection.count_documents({}) == 2

        report = await stub.Cleanup(
            pb.CleanupRequest(), metadata=(("authorization", "Bearer s3cret-token"),)
        )
        assert (report.status, report.deleted_objects, report.deleted_events) == ("ok", 3, 2)
        assert await object_keys(s3, bucket) == []
        assert await object_keys(s3, bucket, prefix="output/") == []
        assert await object_keys(s3, bucket, prefix="keep/") == ["keep/me.txt"]
        assert await outbox_collection.count_documents({}) == 0
        assert await status_collection.count_documents({}) == 0


async def test_cleanup_removes_resumable_sessions_so_their_key_starts_afresh(
    admin_app: App, s3: Minio, bucket: str
) -> None:
    """A session finished before Cleanup, its video gone with it, must not answer its
    idempotency key afterwards (it did: a finished session without its object, unfinishable
    until it expired)."""
    data = mp4_bytes(6000, seed=7)
    meta = resumable_metadata(data, idempotency_key="clip-7")
    admin = (("authorization", "Bearer s3cret-token"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_app.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        first = await stub.StartResumableUpload(pb.StartResumableUploadRequest(metadata=meta))
        done = await stub.WriteUpload(write_messages(first.upload_id, data, 0, finish=True))
        assert done.result.status == "ok"

        await stub.Cleanup(pb.CleanupRequest(), metadata=admin)
        assert await object_keys(s3, bucket) == []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.QueryUploadStatus(pb.QueryUploadStatusRequest(upload_id=first.upload_id))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        again = await stub.StartResumableUpload(pb.StartResumableUploadRequest(metadata=meta))
        assert again.upload_id != first.upload_id
        assert again.persisted_size == 0
        redone = await stub.WriteUpload(write_messages(again.upload_id, data, 0, finish=True))
        assert redone.result.status == "ok"
        assert not redone.result.deduplicated
        assert await object_keys(s3, bucket) == [redone.result.object_key]


async def test_a_restarted_server_starts_on_existing_data(settings: ServerSettings) -> None:
    # FerretDB 1.24 fails one createIndexes of several existing indexes: the second start
    # would never serve (regression test).
    for attempt in range(2):
        app = await create_app(settings.replace(startup_timeout_s=5))
        await app.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub: Stub = pb_grpc.CheckoutServiceStub(channel)
                health = await stub.Health(pb.HealthRequest(), timeout=10)
                assert health.status == "ok", (attempt, health)
                assert dict(health.dependencies) == {"storage": "ok", "database": "ok"}
                # It serves the data the first start wrote, and takes new uploads.
                made = await upload(stub)
                listed = await stub.ListStatuses(pb.ListStatusesRequest(), timeout=10)
                assert made.event_id in [op.event_id for op in listed.operations]
                assert listed.total == attempt + 1
        finally:
            await app.stop(grace_s=0)
