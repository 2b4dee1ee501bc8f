"""GetVideo (issue 26: a browser plays a video with its detections drawn over it) against the
real servers: the stored bytes over native gRPC, over REST and over grpc-web through a real
Envoy, checked by SHA-256 against what was uploaded; the refusals of GetResult for an unknown
event, another client's and a missing key; a video gone from storage; and the abuse limits:
a client past VIDEO_DOWNLOAD_MAX_CONCURRENT_PER_CLIENT is refused while an honest client gets
its video, a full server refuses everyone, and a reader that takes nothing is cut after
VIDEO_DOWNLOAD_STALL_TIMEOUT_S with every place freed.

The servers run with authentication on (several clients, told apart by their keys) and small
limits of their own, to keep the tests quick.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import pytest
from google.api import httpbody_pb2
from miniopy_async.api import Minio

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.api.servicer import VIDEO_CHUNK_BYTES
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App
from tests.helpers import (
    MiB,
    error_details,
    has_cyrillic,
    mp4_bytes,
    retry_delay_s,
    sha256_hex,
    wait_until,
)
from tests.integration.envoy_front import async_envoy_front
from tests.integration.keyed import bearer, keyed_app, uploader_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

if TYPE_CHECKING:  # the async stub type exists only in the generated type stubs
    Stub = pb_grpc.CheckoutServiceAsyncStub

PER_CLIENT = 2
TOTAL = 3
STALL_S = 2.0
# Larger than every buffer between the server and a client that reads nothing (the HTTP/2
# windows, the sockets' buffers), so that such a client's stream waits on flow control.
LARGE = 48 * MiB
UNKNOWN_EVENT = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    return uploader_keys(tmp_path, "camera-a", "camera-b", "greedy", "honest")


@pytest.fixture
async def app(settings: ServerSettings, keys: dict[str, str]) -> AsyncIterator[App]:
    async with keyed_app(
        settings,
        keys,
        video_download_max_concurrent=TOTAL,
        video_download_max_concurrent_per_client=PER_CLIENT,
        # Long here: the limits' tests hold streams that read nothing (the stall has its own).
        video_download_stall_timeout_s=60.0,
    ) as app:
        yield app


@pytest.fixture
async def stub(app: App) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.CheckoutServiceStub(channel)


def upload_messages(data: bytes) -> Iterator[pb.UploadVideoRequest]:
    yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="v.mp4"))
    for start in range(0, len(data), MiB):
        yield pb.UploadVideoRequest(chunk=data[start : start + MiB])


async def upload(stub: Stub, key: str, data: bytes) -> pb.UploadVideoResponse:
    response: pb.UploadVideoResponse = await stub.UploadVideo(
        upload_messages(data), metadata=bearer(key), timeout=60
    )
    return response


async def download(stub: Stub, key: str, event_id: str) -> bytes:
    """The video of GetVideo, checked message by message: the content type on the first,
    at most VIDEO_CHUNK_BYTES of the video in each."""
    messages: list[httpbody_pb2.HttpBody] = [
        m
        async for m in stub.GetVideo(
            pb.GetVideoRequest(event_id=event_id), metadata=bearer(key), timeout=60
        )
    ]
    assert messages[0].content_type == "video/mp4"
    assert all(not m.content_type for m in messages[1:])
    assert all(0 < len(m.data) <= VIDEO_CHUNK_BYTES for m in messages)
    return b"".join(m.data for m in messages)


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    """(code, reason) of a call that must fail, its message Russian; a stream's first read."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await (call.read() if hasattr(call, "read") else call)
    code, reason, message = error_details(caught.value)
    assert has_cyrillic(message), message
    return code, reason


async def held(stub: Stub, key: str, event_id: str) -> Any:
    """A GetVideo stream of `key` that has received its first message and reads no more."""
    call = stub.GetVideo(pb.GetVideoRequest(event_id=event_id), metadata=bearer(key))
    first = await call.read()
    assert isinstance(first, httpbody_pb2.HttpBody)
    assert first.content_type == "video/mp4"
    return call


async def read_to_end(call: Any) -> int:
    """Read what is left of a GetVideo stream; how many bytes of video that was."""
    received = 0
    while isinstance(message := await call.read(), httpbody_pb2.HttpBody):  # else grpc's EOF
        received += len(message.data)
    return received


# --- The bytes, over every route -----------------------------------------------------------


async def test_grpc_sends_the_stored_bytes_in_bounded_messages(
    stub: Stub, keys: dict[str, str], app: App
) -> None:
    data = mp4_bytes(5 * MiB + 123, seed=1)
    uploaded = await upload(stub, keys["camera-a"], data)
    got = await download(stub, keys["camera-a"], uploaded.event_id)
    assert sha256_hex(got) == sha256_hex(data) == uploaded.sha256
    assert app.downloads.in_flight == 0  # its place given back


async def test_rest_and_grpc_web_through_envoy_send_the_raw_bytes(
    stub: Stub, keys: dict[str, str], app: App, tmp_path: Path
) -> None:
    data = mp4_bytes(3 * MiB + 7, seed=2)
    uploaded = await upload(stub, keys["camera-a"], data)
    auth = {"Authorization": f"Bearer {keys['camera-a']}"}
    async with (
        async_envoy_front(tmp_path, [app.port]) as front,
        aiohttp.ClientSession(front.url, timeout=aiohttp.ClientTimeout(total=60)) as web,
    ):
        async with web.get(f"/api/video/{uploaded.event_id}", headers=auth) as answer:
            body = await answer.read()
            headers = answer.headers
        assert answer.status == 200, body[:300]
        assert headers["Content-Type"] == "video/mp4"
        assert "Content-Length" not in headers  # streamed: its size is not known up front
        assert headers["Transfer-Encoding"] == "chunked"
        assert sha256_hex(body) == uploaded.sha256

        # REST errors: the one JSON shape, as GetResult's.
        async with web.get(f"/api/video/{UNKNOWN_EVENT}", headers=auth) as answer:
            assert answer.status == 404
            error = await answer.json()
        assert error["code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert error["details"][0]["reason"] == "EVENT_NOT_FOUND"
        assert has_cyrillic(error["message"])
        async with web.get(f"/api/video/{uploaded.event_id}") as answer:
            assert answer.status == 401

        # grpc-web, as a browser's grpc-web client asks.
        request = pb.GetVideoRequest(event_id=uploaded.event_id).SerializeToString()
        framed = b"\x00" + len(request).to_bytes(4, "big") + request
        web_headers = {"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1", **auth}
        async with web.post(
            "/checkout.v1.CheckoutService/GetVideo", data=framed, headers=web_headers
        ) as answer:
            assert answer.status == 200
            raw = await answer.read()
    video, trailer = hashlib.sha256(), b""
    while raw:
        flag, size = raw[0], int.from_bytes(raw[1:5], "big")
        payload, raw = raw[5 : 5 + size], raw[5 + size :]
        if flag & 0x80:
            trailer = payload
        else:
            video.update(httpbody_pb2.HttpBody.FromString(payload).data)
    assert video.hexdigest() == uploaded.sha256
    assert b"grpc-status:0" in trailer.replace(b" ", b"")


# --- Who may read it -----------------------------------------------------------------------


async def test_refused_exactly_as_get_result_refuses(
    stub: Stub, keys: dict[str, str], s3: Minio, bucket: str, other_bucket: str
) -> None:
    theirs = await upload(stub, keys["camera-b"], mp4_bytes(4000))
    a = bearer(keys["camera-a"])

    async def both(event_id: str, key: tuple[tuple[str, str]], **fields: str) -> Any:
        video = await refused(
            stub.GetVideo(pb.GetVideoRequest(event_id=event_id, **fields), metadata=key)
        )
        result = await refused(
            stub.GetResult(pb.GetResultRequest(event_id=event_id, **fields), metadata=key)
        )
        assert video == result
        return video

    not_found = (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    assert await both(UNKNOWN_EVENT, a) == not_found
    # Another client's event: "not found", exactly as a missing one.
    assert await both(theirs.event_id, a) == not_found
    assert await both("not-a-uuid", a) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT_ID")
    assert await both(theirs.event_id, bearer(keys["camera-b"]), bucket=other_bucket) == (
        grpc.StatusCode.NOT_FOUND,
        "EVENT_NOT_IN_BUCKET",
    )
    # No key, or one the file does not hold.
    no_key = stub.GetVideo(pb.GetVideoRequest(event_id=theirs.event_id))
    assert await refused(no_key) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    bad_key = stub.GetVideo(
        pb.GetVideoRequest(event_id=theirs.event_id), metadata=bearer("ck_not-a-key")
    )
    assert await refused(bad_key) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")

    # Its owner reads it; once its object is gone from storage, the video is not found.
    assert await download(stub, keys["camera-b"], theirs.event_id) == mp4_bytes(4000)
    await s3.remove_object(bucket, theirs.object_key)
    gone = stub.GetVideo(
        pb.GetVideoRequest(event_id=theirs.event_id), metadata=bearer(keys["camera-b"])
    )
    assert await refused(gone) == (grpc.StatusCode.NOT_FOUND, "VIDEO_NOT_FOUND")


# --- Abuse: the limits ---------------------------------------------------------------------


async def test_a_client_past_its_share_is_refused_while_others_get_their_videos(
    stub: Stub, keys: dict[str, str], app: App
) -> None:
    large = await upload(stub, keys["greedy"], mp4_bytes(LARGE, seed=3))
    honest_data = mp4_bytes(2 * MiB, seed=4)
    honest = await upload(stub, keys["honest"], honest_data)

    hoard = [await held(stub, keys["greedy"], large.event_id) for _ in range(PER_CLIENT)]
    assert app.downloads.in_flight == PER_CLIENT
    extra = stub.GetVideo(
        pb.GetVideoRequest(event_id=large.event_id), metadata=bearer(keys["greedy"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await extra.read()
    code, reason, message = error_details(caught.value)
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CLIENT_DOWNLOADS")
    assert has_cyrillic(message)
    assert retry_delay_s(caught.value) > 0

    # The honest client is not affected while the greedy one holds its share.
    assert sha256_hex(await download(stub, keys["honest"], honest.event_id)) == honest.sha256

    # The server's places: the greedy client's two and one more are all it sends at once.
    third = await held(stub, keys["camera-a"], await _own_large(stub, keys["camera-a"]))
    assert app.downloads.in_flight == TOTAL
    full = stub.GetVideo(
        pb.GetVideoRequest(event_id=honest.event_id), metadata=bearer(keys["honest"])
    )
    assert await refused(full) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_DOWNLOADS")

    # Places come back as streams end: the client's one cancelled, the honest one is served.
    for call in [*hoard, third]:
        call.cancel()
    await wait_until(lambda: app.downloads.in_flight == 0, what="every download to end")
    assert sha256_hex(await download(stub, keys["honest"], honest.event_id)) == honest.sha256
    assert app.downloads.refusals["TOO_MANY_CLIENT_DOWNLOADS"] == 1
    assert app.downloads.refusals["TOO_MANY_DOWNLOADS"] == 1


async def _own_large(stub: Stub, key: str) -> str:
    return (await upload(stub, key, mp4_bytes(LARGE, seed=5))).event_id


async def test_a_reader_that_takes_nothing_is_cut_after_the_bound(
    settings: ServerSettings, keys: dict[str, str]
) -> None:
    async with (
        keyed_app(settings, keys, video_download_stall_timeout_s=STALL_S) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = pb_grpc.CheckoutServiceStub(channel)
        large = await upload(stub, keys["greedy"], mp4_bytes(LARGE, seed=6))
        loop = asyncio.get_running_loop()

        async def cut(count: int) -> None:
            await wait_until(
                lambda: app.downloads.refusals["DOWNLOAD_STALLED"] == count,
                timeout_s=30,
                what=f"stalled download {count} to be cut",
            )

        # A reader that stops: cut once flow control held a message for the bound, not before.
        stalled = await held(stub, keys["greedy"], large.event_id)
        began = loop.time()
        await cut(1)
        assert loop.time() - began >= STALL_S
        # It keeps its place while its call lives (gRPC still holds a message for it) ...
        assert app.downloads.in_flight == 1
        # ... and when it reads on, it gets what was buffered, then the status; never all.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_to_end(stalled)
        code, reason, message = error_details(caught.value)
        assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DOWNLOAD_STALLED")
        assert has_cyrillic(message)
        await wait_until(lambda: app.downloads.in_flight == 0, what="its place given back")

        # A stalled reader that goes away gives its place back too.
        gone = await held(stub, keys["greedy"], large.event_id)
        await cut(2)
        gone.cancel()
        await wait_until(lambda: app.downloads.in_flight == 0, what="its place given back")

        # A client that reads gets its video from the same server.
        got = await download(stub, keys["greedy"], large.event_id)
        assert sha256_hex(got) == large.sha256


async def test_readers_that_stall_behind_envoy_are_cut_while_an_honest_one_downloads(
    settings: ServerSettings, keys: dict[str, str], tmp_path: Path
) -> None:
    """REST downloads that read nothing, through Envoy: Envoy must not take the video in for
    them (what it buffers is bounded by its HTTP/2 windows toward the server), so the server's
    flow control holds them and the stall bound cuts them, while another client's download
    goes through, on the same connection from Envoy to the server (one Envoy worker). Broken
    on purpose: with Envoy's windows toward the server set to 256 MiB, Envoy took the whole
    48 MiB of each and the server never saw a stall; with Envoy's default windows, the two
    stalled streams sometimes filled the connection's window (2 runs in about 20), and the
    honest download got no answer."""
    async with (
        keyed_app(
            settings,
            keys,
            video_download_stall_timeout_s=STALL_S,
            video_download_max_concurrent_per_client=PER_CLIENT,
        ) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
        # One worker: every stream shares its one connection to the server.
        async_envoy_front(tmp_path, [app.port], concurrency=1) as front,
        aiohttp.ClientSession(front.url, timeout=aiohttp.ClientTimeout(total=30)) as web,
    ):
        stub = pb_grpc.CheckoutServiceStub(channel)
        large = await upload(stub, keys["greedy"], mp4_bytes(LARGE, seed=7))
        honest = await upload(stub, keys["honest"], mp4_bytes(3 * MiB, seed=8))
        greedy = {"Authorization": f"Bearer {keys['greedy']}"}

        # Each greedy download gets its headers and first bytes, then is never read again.
        stalled = [await web.get(f"/api/video/{large.event_id}", headers=greedy) for _ in "ab"]
        for answer in stalled:
            assert answer.status == 200
            assert await answer.content.readexactly(8)
        async with web.get(f"/api/video/{large.event_id}", headers=greedy) as extra:
            assert extra.status == 429
            assert (await extra.json())["details"][0]["reason"] == "TOO_MANY_CLIENT_DOWNLOADS"

        # The server cuts both once nothing moves for the bound: Envoy did not drain them.
        await wait_until(
            lambda: app.downloads.refusals["DOWNLOAD_STALLED"] == PER_CLIENT,
            timeout_s=30,
            what="both stalled downloads to be cut",
        )
        auth = {"Authorization": f"Bearer {keys['honest']}"}
        async with web.get(f"/api/video/{honest.event_id}", headers=auth) as answer:
            assert answer.status == 200
            assert sha256_hex(await answer.read()) == honest.sha256
        for answer in stalled:
            answer.close()
        await wait_until(lambda: app.downloads.in_flight == 0, what="their places given back")
