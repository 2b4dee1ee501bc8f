"""grpc-web through the stack's Envoy, as a browser speaks it: a server-streaming WatchStatus
read frame by frame as the changes happen, and ListStatuses paged with its tokens (over
grpc-web and over REST), every event once, none missing."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from google.protobuf.message import Message
from miniopy_async.api import Minio

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from devstack._stack import LocalStack
from tests.helpers import mp4_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SERVICE = "checkout.v1.CheckoutService"
HEADERS = {"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"}


def frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


async def frames(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[int, bytes]]:
    """(flag, payload) of each grpc-web frame, as soon as it has arrived whole."""
    while True:
        try:
            head = await response.content.readexactly(5)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise AssertionError("a frame was cut") from exc
            return
        yield head[0], await response.content.readexactly(int.from_bytes(head[1:], "big"))


def trailers(payload: bytes) -> dict[str, str]:
    lines = payload.decode().strip().split("\r\n")
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.fixture
async def web(stack: LocalStack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{stack.ports.rest}", timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


async def unary(web: aiohttp.ClientSession, method: str, request: Message, reply: Message) -> None:
    """A unary call over grpc-web, its one response parsed into `reply`."""
    async with web.post(f"/{SERVICE}/{method}", data=frame(request), headers=HEADERS) as answer:
        assert answer.status == 200
        got = [f async for f in frames(answer)]
    assert [flag for flag, _ in got] == [0, 0x80]
    assert trailers(got[1][1])["grpc-status"] == "0"
    reply.ParseFromString(got[0][1])


async def native_upload(stack: LocalStack) -> pb.UploadVideoResponse:
    # Uploads are client streams, which grpc-web cannot send: native gRPC through Envoy.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.rest}") as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        requests = [
            pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="web.mp4")),
            pb.UploadVideoRequest(chunk=mp4_bytes(4000)),
        ]
        response: pb.UploadVideoResponse = await stub.UploadVideo(iter(requests), timeout=30)
    return response


async def test_grpc_web_watch_streams_each_change_as_it_happens(
    web: aiohttp.ClientSession, stack: LocalStack
) -> None:
    uploaded = await native_upload(stack)
    request = pb.WatchStatusRequest(event_id=uploaded.event_id)
    async with web.post(f"/{SERVICE}/WatchStatus", data=frame(request), headers=HEADERS) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("application/grpc-web")
        stream = frames(answer)
        flag, payload = await anext(stream)
        assert flag == 0
        first = pb.StatusUpdate.FromString(payload)
        assert (first.event_id, first.heartbeat) == (uploaded.event_id, False)
        assert first.status in {"new", "sent"}

        # The stream is open (no trailer yet): the result written now arrives as a frame.
        s3 = Minio(f"127.0.0.1:{stack.ports.minio}", "minioadmin", "minioadmin", secure=False)
        try:
            raw = b'{"objects": []}'
            await s3.put_object(
                "videos", f"output/{uploaded.video_id}.json", io.BytesIO(raw), len(raw)
            )
        finally:
            await s3.close_session()  # type: ignore[no-untyped-call]
        rest = [f async for f in stream]
    updates = [pb.StatusUpdate.FromString(p) for flag, p in rest if flag == 0]
    statuses = [u.status for u in updates if not u.heartbeat]
    assert statuses[-1] == "ready"
    assert set(statuses) <= {"sent", "ready"}
    assert rest[-1][0] == 0x80  # the trailer frame ends the stream
    assert trailers(rest[-1][1])["grpc-status"] == "0"


async def test_grpc_web_and_rest_listings_page_through_every_event_once(
    web: aiohttp.ClientSession, stack: LocalStack
) -> None:
    for _ in range(5):
        await native_upload(stack)
    # grpc-web, pages of 2.
    seen: list[str] = []
    token, total = "", -1
    while True:
        page = pb.ListStatusesResponse()
        await unary(
            web, "ListStatuses", pb.ListStatusesRequest(page_size=2, page_token=token), page
        )
        assert len(page.operations) <= 2
        seen += [op.event_id for op in page.operations]
        total = page.total
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == total >= 5

    # REST (JSON transcoding), pages of 3: the same events, in the same order.
    rest_seen: list[str] = []
    params = {"page_size": "3"}
    while True:
        async with web.get("/api/status/all", params=params) as answer:
            assert answer.status == 200
            body = await answer.json()
        rest_seen += [op["event_id"] for op in body["operations"]]
        if not body.get("next_page_token"):
            break
        params = {"page_size": "3", "page_token": body["next_page_token"]}
    assert rest_seen == seen
