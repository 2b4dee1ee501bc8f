"""GetResult reads a result of many network reads whole (aiohttp hands the body over in the
pieces that arrived), and refuses one over RESULT_MAX_BYTES (512 KiB here: the test's own
uploads stay under aiohttp's 1 MiB warning for bodies sent as bytes)."""

from __future__ import annotations

import io
import json

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from miniopy_async.api import Minio

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from tests.integration.test_status import upload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIMIT = 512 * 1024


@pytest.fixture
def settings(settings: ServerSettings) -> ServerSettings:
    return settings.replace(result_max_bytes=LIMIT)


async def test_a_large_result_is_read_whole(
    stub: pb_grpc.CheckoutServiceAsyncStub, s3: Minio, bucket: str
) -> None:
    uploaded = await upload(stub)
    frames = [{"index": i, "detections": [{"label": "face", "score": 0.5}]} for i in range(7_000)]
    body = json.dumps({"status": "ok", "frames": frames}).encode()
    assert 256 * 1024 < len(body) <= LIMIT  # many reads of at most 64 KiB
    key = f"output/{uploaded.video_id}.json"
    await s3.put_object(bucket, key, io.BytesIO(body), len(body), "application/json")

    response = await stub.GetResult(pb.GetResultRequest(event_id=uploaded.event_id))

    assert response.status == "ready"
    got = MessageToDict(response.prediction)
    assert len(got["frames"]) == 7_000
    assert got["frames"][-1]["index"] == 6_999


async def test_a_result_over_the_limit_is_refused(
    stub: pb_grpc.CheckoutServiceAsyncStub, s3: Minio, bucket: str
) -> None:
    uploaded = await upload(stub)
    body = b'{"pad": "' + b"x" * LIMIT + b'"}'
    key = f"output/{uploaded.video_id}.json"
    await s3.put_object(bucket, key, io.BytesIO(body), len(body), "application/json")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetResult(pb.GetResultRequest(event_id=uploaded.event_id))

    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
