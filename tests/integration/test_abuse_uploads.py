"""One client cannot stall the others (issue 23), against the real server, MinIO and FerretDB:
streams that send their metadata and a small chunk and then nothing (UploadVideo, WriteUpload,
a REST form that never reaches its file part) hold a granule of memory each and are cut with
UPLOAD_STALLED, a client beyond its share of streams or sessions is refused, and an honest
client's upload goes through meanwhile; a stream that finds the memory budget spent half-way is
refused with a retry hint instead of waiting, and a write resumes where it was cut. Nothing is
left behind: no object, no open multipart upload, the memory budget full again, no stream
counted as running.

The REST form is sent straight to UploadVideoHttp (as Envoy would send it), without Envoy.
The idle timeouts are short here (settings of the test's server) to keep the tests quick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.api import httpbody_pb2
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from tests.helpers import MiB, error_details, error_info, has_cyrillic, mp4_bytes, retry_delay_s
from tests.integration.keyed import bearer, keyed_app, uploader_keys
from tests.integration.resumable_helpers import metadata, write_list
from tests.integration.storage_checks import object_keys, pending_uploads, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

if TYPE_CHECKING:  # the async stub type exists only in the generated type stubs
    Stub = pb_grpc.CheckoutServiceAsyncStub

PART = 5 * MiB  # the tests' UPLOAD_PART_BYTES
IDLE_S = 3.0
BOUNDARY = "abuse-boundary"


class Gate:
    """Holds attackers' streams open after their first messages, until the test ends."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def messages(self, *first: Any) -> AsyncIterator[Any]:
        for message in first:
            yield message
        await self.closed.wait()  # then nothing: a stalled client


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    return uploader_keys(tmp_path, "attacker", "other", "honest")


@pytest.fixture
async def guarded(settings: ServerSettings, keys: dict[str, str]) -> AsyncIterator[App]:
    async with keyed_app(
        settings,
        keys,
        upload_idle_timeout_s=IDLE_S,
        upload_memory_budget_bytes=12 * PART,
        upload_memory_wait_s=0.5,
        upload_max_concurrent_per_client=5,
        upload_max_open_sessions_per_client=2,
    ) as app:
        yield app


def head(size_bytes: int = 0) -> pb.UploadVideoRequest:
    return pb.UploadVideoRequest(
        metadata=pb.UploadMetadata(filename="stall.mp4", size_bytes=size_bytes)
    )


def small_chunk() -> pb.UploadVideoRequest:
    return pb.UploadVideoRequest(chunk=mp4_bytes(4096))


def form_preamble() -> pb.UploadVideoHttpRequest:
    """A multipart body's first piece: a text field, and then the file part never comes."""
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="filename"\r\n\r\nx.mp4\r\n'
    ).encode()
    return pb.UploadVideoHttpRequest(
        http_body=httpbody_pb2.HttpBody(
            content_type=f"multipart/form-data; boundary={BOUNDARY}", data=body
        )
    )


async def refused_with(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str], float | None]:
    """(code, reason, ErrorInfo metadata, retry hint) of a call that must fail with a Russian
    message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code, reason, message = error_details(caught.value)
    assert has_cyrillic(message), message
    hint = retry_delay_s(caught.value) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
    return code, reason, dict(error_info(caught.value)[1].metadata), hint


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def honest_upload(
    stub: Stub, key: str, data: bytes
) -> tuple[pb.UploadVideoResponse, list[str]]:
    """Upload `data` as a well-behaved client: after a refusal with a retry hint, try again
    once the hint has passed (what the SDK does), for a bounded time. The answer and the
    refusals it met."""
    refusals: list[str] = []
    give_up = time.monotonic() + IDLE_S + 8
    while True:
        assert time.monotonic() < give_up, f"the honest upload never went through: {refusals}"
        messages = [pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="ok.mp4"))]
        messages += [pb.UploadVideoRequest(chunk=chunk) for chunk in split(data, 256 * 1024)]
        try:
            return await stub.UploadVideo(iter(messages), metadata=bearer(key)), refusals
        except grpc.aio.AioRpcError as refused:
            if refused.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            refusals.append(error_details(refused)[1])
            await asyncio.sleep(retry_delay_s(refused))  # the server's own hint


async def test_stalled_streams_are_cut_and_an_honest_upload_goes_through(
    guarded: App,
    keys: dict[str, str],
    s3: Minio,
    bucket: str,
    outbox_collection: AsyncCollection[dict[str, Any]],
) -> None:
    gate = Gate()
    attacker = bearer(keys["attacker"])
    session_data = mp4_bytes(4 * PART)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        # The attacker: two resumable sessions (a third is refused), each written a little.
        sessions = [
            await stub.StartResumableUpload(
                pb.StartResumableUploadRequest(metadata=metadata(session_data)), metadata=attacker
            )
            for _ in range(2)
        ]
        third = stub.StartResumableUpload(
            pb.StartResumableUploadRequest(metadata=metadata(session_data)), metadata=attacker
        )
        code, reason, _, hint = await refused_with(third)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_UPLOAD_SESSIONS")
        assert hint

        started = time.monotonic()
        stalled: list[Any] = [
            stub.UploadVideo(gate.messages(head(), small_chunk()), metadata=attacker)
            for _ in range(2)
        ]
        # One sends more than a part first: its multipart upload must be aborted.
        more_than_a_part = [
            pb.UploadVideoRequest(chunk=chunk)
            for chunk in split(mp4_bytes(PART + MiB, seed=3), 512 * 1024)
        ]
        stalled.append(
            stub.UploadVideo(gate.messages(head(), *more_than_a_part), metadata=attacker)
        )
        stalled += [
            stub.WriteUpload(
                gate.messages(write_list(s.upload_id, session_data, 0, 4096)[0]),
                metadata=attacker,
            )
            for s in sessions
        ]
        stalled.append(stub.UploadVideoHttp(gate.messages(form_preamble()), metadata=attacker))
        # Another client's stalled upload takes the last of the memory.
        stalled.append(
            stub.UploadVideo(gate.messages(head(), small_chunk()), metadata=bearer(keys["other"]))
        )

        async def all_in() -> bool:
            admission = guarded.admission
            streams = (admission.uploads_in_flight, admission.writes_in_flight)
            # Each holds what it buffers, in granules of 1 MiB: one each, and the long one
            # its last MiB once its first part is stored.
            return streams == (4, 2) and admission.memory.used_bytes == 6 * MiB

        await wait_until(all_in, what="the attackers' streams admitted, their first part stored")
        assert await pending_uploads(s3, bucket) == 1

        # The attacker streams five uploads and writes, its share (the REST form is not
        # admitted before its file part): one more is refused at once.
        # (Its answer waits while the server drains what the client still sends.)
        sixth = stub.UploadVideo(gate.messages(head(), small_chunk()), metadata=attacker)
        await wait_until(
            lambda: guarded.admission.refusals["TOO_MANY_CLIENT_UPLOADS"] == 1,
            what="the sixth stream refused",
        )

        honest, met = await honest_upload(stub, keys["honest"], mp4_bytes(3 * MiB, seed=7))
        honest_s = time.monotonic() - started

        outcomes = [await refused_with(call) for call in stalled]
        code, reason, meta, hint = await refused_with(sixth)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CLIENT_UPLOADS")
        assert hint
        assert meta == {"limit": "5"}
        gate.closed.set()

    # The stalled streams hold a granule each, not two parts: the honest client went through
    # at once, before they were cut.
    assert met == []
    assert honest_s < IDLE_S
    assert await object_keys(s3, bucket) == [honest.object_key]
    assert await outbox_collection.count_documents({}) == 1

    # Every stalled stream got UPLOAD_STALLED; the writes learn where to resume.
    assert {(code, reason) for code, reason, _, _ in outcomes} == {
        (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_STALLED")
    }
    writes = [meta for _, _, meta, _ in outcomes[3:5]]
    assert writes == [{"idle_timeout_s": "3", "persisted_size": "0"}] * 2
    for session in sessions:
        state = await stub_status(guarded, keys["attacker"], session.upload_id)
        assert state.persisted_size == 0  # resumable: nothing durable yet, still open

    # Nothing left behind.
    assert await pending_uploads(s3, bucket) == 0
    admission = guarded.admission
    assert admission.memory.used_bytes == 0
    assert (admission.uploads_in_flight, admission.writes_in_flight) == (0, 0)
    assert admission.streams_of("attacker") == 0
    assert admission.refusals["UPLOAD_STALLED"] == 7
    assert admission.refusals["TOO_MANY_CLIENT_UPLOADS"] == 1
    assert admission.refusals["TOO_MANY_UPLOAD_SESSIONS"] == 1
    assert admission.refusals["UPLOAD_MEMORY_BUSY"] == 0


@pytest.fixture
async def tight(settings: ServerSettings, keys: dict[str, str]) -> AsyncIterator[App]:
    """A memory budget of two parts, waited for half a second."""
    async with keyed_app(
        settings,
        keys,
        upload_memory_budget_bytes=2 * PART,
        upload_memory_wait_s=0.5,
        upload_idle_timeout_s=30.0,
    ) as app:
        yield app


async def test_a_write_that_finds_the_memory_spent_half_way_is_refused_and_resumes(
    tight: App, keys: dict[str, str], s3: Minio, bucket: str
) -> None:
    gate, more = Gate(), asyncio.Event()
    attacker = bearer(keys["attacker"])
    data = mp4_bytes(2 * PART, seed=5)
    almost_a_part = [  # buffered, never a part: held until the stream ends
        pb.UploadVideoRequest(chunk=chunk)
        for chunk in split(mp4_bytes(PART - 512 * 1024, seed=6), 512 * 1024)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tight.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        honest = bearer(keys["honest"])
        session = await stub.StartResumableUpload(
            pb.StartResumableUploadRequest(metadata=metadata(data)), metadata=honest
        )
        assert session.part_size_bytes == PART
        first_part = write_list(session.upload_id, data, 0, PART)
        rest = write_list(session.upload_id, data, PART, finish=True)

        async def writes() -> AsyncIterator[pb.WriteUploadRequest]:
            for message in first_part:
                yield message
            await more.wait()
            for message in rest:
                yield message

        write = stub.WriteUpload(writes(), metadata=honest)
        await wait_until(
            lambda: stub_persisted(tight, keys["honest"], session.upload_id, PART),
            what="the first part committed",
        )
        # Meanwhile another client's two stalled uploads take the whole budget.
        fillers = [
            stub.UploadVideo(gate.messages(head(), *almost_a_part), metadata=attacker)
            for _ in range(2)
        ]
        await wait_until(
            lambda: tight.admission.memory.used_bytes == 2 * PART, what="the budget spent"
        )
        more.set()
        code, reason, meta, hint = await refused_with(write)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPLOAD_MEMORY_BUSY")
        assert meta == {"persisted_size": str(PART)}  # where to resume
        assert hint

        for filler in fillers:
            filler.cancel()
        await wait_until(
            lambda: tight.admission.memory.used_bytes == 0, what="the fillers' memory back"
        )
        done = await stub.WriteUpload(iter(rest), metadata=honest)
        gate.closed.set()

    assert done.result.size_bytes == 2 * PART
    assert await object_keys(s3, bucket) == [done.result.object_key]
    assert await pending_uploads(s3, bucket) == 0
    assert tight.admission.refusals["UPLOAD_MEMORY_BUSY"] == 1
    assert (tight.admission.uploads_in_flight, tight.admission.writes_in_flight) == (0, 0)


async def stub_persisted(app: App, key: str, upload_id: str, size: int) -> bool:
    return (await stub_status(app, key, upload_id)).persisted_size == size


async def stub_status(app: App, key: str, upload_id: str) -> pb.QueryUploadStatusResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        return await stub.QueryUploadStatus(
            pb.QueryUploadStatusRequest(upload_id=upload_id), metadata=bearer(key)
        )


@pytest.fixture
async def open_server(settings: ServerSettings) -> AsyncIterator[App]:
    """Authentication off: a client is its address (all of these tests' come from 127.0.0.1)."""
    app = await create_app(
        settings.replace(
            upload_idle_timeout_s=1.5,  # below UPLOAD_MAX_DURATION_S: the silence's cut
            upload_min_bytes_per_s=64 * 1024,
            upload_throughput_window_s=1.0,
            upload_max_concurrent_per_client=2,
            upload_max_duration_s=3.0,
        )
    )
    await app.start()
    yield app
    await app.stop(grace_s=1.0)


async def test_a_trickle_and_a_silence_are_cut_and_an_address_gets_its_share_only(
    open_server: App, s3: Minio, bucket: str
) -> None:
    async def trickle() -> AsyncIterator[pb.UploadVideoRequest]:
        yield head()
        data = mp4_bytes(64 * 1024)
        for start in range(0, len(data), 1024):  # 1 KiB every 0.1 s: 10 KiB/s
            yield pb.UploadVideoRequest(chunk=data[start : start + 1024])
            await asyncio.sleep(0.1)  # the client's own pace

    gate = Gate()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{open_server.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        slow = stub.UploadVideo(trickle())
        silent = stub.UploadVideo(gate.messages(head(), small_chunk()))
        await wait_until(
            lambda: open_server.admission.uploads_in_flight == 2, what="both streams admitted"
        )
        # A third stream from the same address is beyond its share.
        third = stub.UploadVideo(iter([head(), small_chunk()]))
        code, reason, meta, hint = await refused_with(third)
        assert (code, reason, meta) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_CLIENT_UPLOADS",
            {"limit": "2"},
        )
        assert hint

        code, reason, meta, _ = await refused_with(slow)
        assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_STALLED")
        assert meta["min_bytes_per_s"] == "65536"
        code, reason, meta, _ = await refused_with(silent)
        assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_STALLED")
        assert meta["idle_timeout_s"] == "1.5"
        gate.closed.set()

    assert await object_keys(s3, bucket) == []
    assert await pending_uploads(s3, bucket) == 0
    admission = open_server.admission
    assert (admission.uploads_in_flight, admission.memory.used_bytes) == (0, 0)
    assert admission.refusals["UPLOAD_STALLED"] == 2


async def test_a_write_is_cut_at_the_maximum_duration_and_resumes(
    open_server: App, s3: Minio, bucket: str
) -> None:
    data = mp4_bytes(4 * PART + 7)
    calls: list[grpc.aio.StreamUnaryCall[pb.WriteUploadRequest, pb.WriteUploadResponse]] = []

    async def steady(upload_id: str) -> AsyncIterator[pb.WriteUploadRequest]:
        for message in write_list(upload_id, data, 0):  # 256 KiB every 0.05 s: 5 MiB/s
            if calls[0].done():
                # Answered: a write on the closed stream could make grpc-python report its
                # own INTERNAL instead of the server's status (grpc/grpc#36066), which a
                # loaded machine's slow pace once let outlast the server's drain.
                return
            yield message
            await asyncio.sleep(0.05)  # the client's own pace, well above the minimum

    async with grpc.aio.insecure_channel(f"127.0.0.1:{open_server.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        session = await stub.StartResumableUpload(
            pb.StartResumableUploadRequest(metadata=metadata(data))
        )
        calls.append(stub.WriteUpload(steady(session.upload_id)))
        code, reason, meta, _ = await refused_with(calls[0])
        assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_TOO_LONG")
        state = await stub.QueryUploadStatus(
            pb.QueryUploadStatusRequest(upload_id=session.upload_id)
        )
        assert meta["persisted_size"] == str(state.persisted_size)
        assert 0 < state.persisted_size < len(data)  # some parts durable, not all
        rest = write_list(session.upload_id, data, state.persisted_size, finish=True)
        done = await stub.WriteUpload(iter(rest))
    assert done.result.size_bytes == len(data)
    assert await object_keys(s3, bucket) == [done.result.object_key]
    assert await pending_uploads(s3, bucket) == 0


async def test_a_form_preamble_beyond_its_limit_is_refused(open_server: App) -> None:
    junk = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="junk{i}"\r\n\r\n{"x" * 900}\r\n'
        for i in range(100)
    ).encode()  # about 100 KiB of fields, and no file part before them
    pieces = [junk[i : i + 16 * 1024] for i in range(0, len(junk), 16 * 1024)]
    first = form_preamble()
    messages = [first] + [
        pb.UploadVideoHttpRequest(http_body=httpbody_pb2.HttpBody(data=piece)) for piece in pieces
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{open_server.port}") as channel:
        stub: Stub = pb_grpc.CheckoutServiceStub(channel)
        code, reason, _, _ = await refused_with(stub.UploadVideoHttp(iter(messages)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FORM")
