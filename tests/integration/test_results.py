"""Results against the real servers: the reconcile that finds results nobody asked for, the
clock margin a result's time is judged with, and RESULT_TOO_LARGE over the wire."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.adapters.mongo_outbox import MongoOutbox
from checkout_server.config import ServerSettings
from checkout_server.domain import EventStatus
from checkout_server.outbox.document import Document
from checkout_server.status.service import RESULT_CLOCK_SKEW
from checkout_server.wiring.server import App, create_app
from tests.helpers import error_details, has_cyrillic, outbox_event
from tests.integration.storage_checks import wait_until
from tests.integration.test_status import upload, write_result

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def serve(settings: ServerSettings) -> App:
    app = await create_app(settings)
    await app.start()
    return app


@pytest.fixture
async def reconciling(settings: ServerSettings) -> AsyncIterator[Stub]:
    app = await serve(settings.replace(result_reconcile_interval_s=0.5))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.CheckoutServiceStub(channel)
    await app.stop(grace_s=1)


async def test_the_reconcile_marks_results_nobody_asked_for(
    reconciling: Stub,
    s3: Minio,
    bucket: str,
    status_collection: AsyncCollection[Document],
) -> None:
    uploaded = [await upload(reconciling, size=2000 + i) for i in range(3)]
    for done in uploaded[:2]:
        await write_result(s3, bucket, done.video_id, b'{"objects": []}')

    # No GetStatus, no watcher: only the server's reconcile can have found them.
    async def marked() -> bool:
        found = await status_collection.find({"ready_at": {"$ne": None}}, {"_id": 1}).to_list()
        return {d["_id"] for d in found} == {u.event_id for u in uploaded[:2]}

    await wait_until(marked, timeout_s=30, what="the reconcile to mark both results")
    listed = await reconciling.ListStatuses(pb.ListStatusesRequest(status="ready"))
    assert sorted(op.event_id for op in listed.operations) == sorted(
        u.event_id for u in uploaded[:2]
    )
    assert listed.total == 2
    waiting = await status_collection.find_one({"_id": uploaded[2].event_id})
    assert waiting is not None
    assert waiting.get("ready_at") is None


@pytest.mark.parametrize(
    ("result_age", "ready"),
    [
        (RESULT_CLOCK_SKEW - timedelta(seconds=2), True),  # within the margin: counts
        (RESULT_CLOCK_SKEW + timedelta(seconds=20), False),  # older: an earlier run's result
    ],
    ids=["within-margin", "beyond-margin"],
)
async def test_a_result_older_than_its_event_counts_only_within_the_clock_margin(
    stub: Stub,
    s3: Minio,
    bucket: str,
    outbox_collection: AsyncCollection[Document],
    status_collection: AsyncCollection[Document],
    result_age: timedelta,
    ready: bool,
) -> None:
    # The event is made `result_age` after now (as if this server's clock were ahead of the
    # storage's by that much), then its result is written now.
    created = datetime.now(UTC) + result_age
    event = outbox_event(
        "7c9e6679-7425-40de-944b-e07fc1f90ae7", at=created, bucket=bucket, status=EventStatus.SENT
    )
    await MongoOutbox(outbox_collection, status_collection).add(event)
    await write_result(s3, bucket, event.video_id, b'{"objects": []}')

    got = await stub.GetStatus(pb.GetStatusRequest(event_id=event.event_id))
    assert got.operation.status == ("ready" if ready else "sent")
    result = await stub.GetResult(pb.GetResultRequest(event_id=event.event_id))
    assert result.HasField("prediction") == ready


async def test_a_result_too_large_is_refused_over_the_wire(
    settings: ServerSettings, s3: Minio, bucket: str
) -> None:
    app = await serve(settings.replace(result_max_bytes=1024))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub: Stub = pb_grpc.CheckoutServiceStub(channel)
            uploaded = await upload(stub)
            big: dict[str, Any] = {"objects": [{"label": "x" * 100, "score": 0.5}] * 20}
            raw = json.dumps(big).encode()
            assert len(raw) > 1024
            await write_result(s3, bucket, uploaded.video_id, raw)

            status = await stub.GetStatus(pb.GetStatusRequest(event_id=uploaded.event_id))
            assert status.operation.status == "ready"  # a result exists...
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # ...too large to send
                await stub.GetResult(pb.GetResultRequest(event_id=uploaded.event_id))
            code, reason, message = error_details(caught.value)
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESULT_TOO_LARGE")
            assert has_cyrillic(message)

            # A result of exactly the limit is sent whole.
            small = b'{"objects": [], "pad": "' + b"y" * (1024 - 26) + b'"}'
            assert len(small) == 1024
            await write_result(s3, bucket, uploaded.video_id, small)
            result = await stub.GetResult(pb.GetResultRequest(event_id=uploaded.event_id))
            assert result.prediction["pad"] == "y" * (1024 - 26)
    finally:
        await app.stop(grace_s=1)
