"""The servicer and the error interceptor over a real gRPC channel, with in-memory ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import timedelta

import grpc
import pytest
from google.api import httpbody_pb2
from google.protobuf.message import Message

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.api import servicer
from checkout_server.api.rates import CallRates
from checkout_server.api.servicer import CheckoutServicer
from checkout_server.domain import EventStatus
from checkout_server.health import DependencyMonitor, new_health_servicer
from checkout_server.status.watch import WatchHub
from checkout_server.supervisor import Supervisor
from checkout_server.upload.limits import UploadLimits
from checkout_server.upload.pipeline import UploadPipeline
from checkout_server.wiring.server import create_server
from tests.fakes import NOW, FakeOutbox, FakeRateLimit, FakeStorage, status_service
from tests.helpers import (
    MiB,
    error_details,
    mp4_bytes,
    outbox_event,
    retry_delay_s,
    sha256_hex,
)
from tests.unit.test_error_table import ERRORS

pytestmark = pytest.mark.timeout(20)


class Harness:
    def __init__(self, rates: CallRates | None = None) -> None:
        self.storage = FakeStorage()
        self.outbox = FakeOutbox()
        pipeline = UploadPipeline(
            storage=self.storage,
            outbox=self.outbox,
            limits=UploadLimits(
                default_bucket="videos",
                allowed_buckets=frozenset({"videos"}),
                max_bytes=32 * MiB,
                part_bytes=5 * MiB,
            ),
        )
        health_servicer = new_health_servicer()
        self.supervisor = Supervisor()
        self.monitor = DependencyMonitor(
            {"storage": self.storage.ping, "database": self.outbox.ping},
            health_servicer,
            interval_s=60,
            supervisor=self.supervisor,
        )
        self.status = status_service(self.storage, self.outbox, result_max_bytes=1 * MiB)
        self.hub = WatchHub(
            records=self.outbox.status_records(),
            status=self.status,
            supervisor=self.supervisor,
            poll_interval_s=0.05,
            poll_min_gap_s=0.05,
            result_check_interval_s=0.05,
            reconcile_interval_s=60,
            max_pending=100,
        )
        self.servicer = CheckoutServicer(
            pipeline=pipeline, status=self.status, hub=self.hub, monitor=self.monitor, rates=rates
        )
        self.server, port = create_server("127.0.0.1:0", self.servicer, health_servicer)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.CheckoutServiceStub(self.channel)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    await h.server.start()
    await h.monitor.check_now()
    yield h
    await h.channel.close(None)
    await h.server.stop(None)


def upload_messages(
    data: bytes, meta: pb.UploadMetadata | None = None, chunk: int = 256 * 1024
) -> Iterator[pb.UploadVideoRequest]:
    yield pb.UploadVideoRequest(metadata=meta or pb.UploadMetadata(filename="v.mp4"))
    for start in range(0, len(data), chunk):
        yield pb.UploadVideoRequest(chunk=data[start : start + chunk])


async def test_upload_returns_the_stored_video(harness: Harness) -> None:
    data = mp4_bytes(6 * MiB)
    response = await harness.stub.UploadVideo(upload_messages(data))
    assert response.status == "ok"
    assert response.event_id == response.video_id
    assert response.bucket == "videos"
    assert response.object_key == f"input/{response.video_id}.mp4"
    assert response.size_bytes == len(data)
    assert response.sha256 == sha256_hex(data)
    assert harness.storage.objects[("videos", response.object_key)] == data
    assert set(harness.outbox.events) == {response.event_id}


@pytest.mark.parametrize(
    ("messages", "code", "reason"),
    [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "MISSING_METADATA"),
        ([pb.UploadVideoRequest(chunk=b"x")], grpc.StatusCode.INVALID_ARGUMENT, "MISSING_METADATA"),
        (
            [
                pb.UploadVideoRequest(metadata=pb.UploadMetadata()),
                pb.UploadVideoRequest(chunk=mp4_bytes(100)),
                pb.UploadVideoRequest(metadata=pb.UploadMetadata()),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "DUPLICATE_METADATA",
        ),
        (
            [pb.UploadVideoRequest(metadata=pb.UploadMetadata(bucket="other"))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "BUCKET_NOT_ALLOWED",
        ),
        (
            [pb.UploadVideoRequest(metadata=pb.UploadMetadata())],
            grpc.StatusCode.INVALID_ARGUMENT,
            "EMPTY_FILE",
        ),
        (
            list(upload_messages(b"GIF89a" + b"\0" * 100)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NOT_MP4",
        ),
    ],
)
async def test_protocol_errors_are_rich_statuses(
    harness: Harness, messages: list[pb.UploadVideoRequest], code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.UploadVideo(iter(messages))
    got_code, got_reason, message = error_details(caught.value)
    assert (got_code, got_reason) == (code, reason)
    [expected] = {text for _, _, known, text in ERRORS if known == reason}
    assert message == expected or message.startswith(f"{expected}: "), message
    assert harness.storage.objects == {}
    assert harness.outbox.events == {}


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        ([pb.UploadVideoRequest(chunk=mp4_bytes(100))], "MISSING_METADATA"),
        (
            [
                pb.UploadVideoRequest(metadata=pb.UploadMetadata()),
                pb.UploadVideoRequest(chunk=mp4_bytes(100)),
                pb.UploadVideoRequest(metadata=pb.UploadMetadata()),
            ],
            "DUPLICATE_METADATA",
        ),
        ([pb.UploadVideoRequest(metadata=pb.UploadMetadata(bucket="other"))], "BUCKET_NOT_ALLOWED"),
        (list(upload_messages(b"GIF89a" + b"\0" * 100)), "NOT_MP4"),
    ],
    ids=["chunk-first", "duplicate-metadata", "bucket", "not-mp4"],
)
async def test_a_refusal_reads_the_rest_of_the_stream_before_it_is_sent(
    harness: Harness, head: list[pb.UploadVideoRequest], reason: str
) -> None:
    """The server reads (and drops) what the client still sends after a refusal, so a client
    still writing gets the server's status, not grpcio's own INTERNAL for a write that met a
    closed stream (grpc/grpc#36066). Undrained, the client would stop at the flow-control
    window (a few MiB) and never finish sending the 16 MiB below."""
    sent = 0

    async def stream() -> AsyncIterator[pb.UploadVideoRequest]:
        nonlocal sent
        for message in head:
            yield message
        for _ in range(16):
            yield pb.UploadVideoRequest(chunk=b"\0" * MiB)
            sent += 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.UploadVideo(stream())
    assert error_details(caught.value)[1] == reason
    assert sent == 16


async def test_unexpected_error_is_internal_with_a_generic_message(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(harness.outbox, "add", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.UploadVideo(upload_messages(mp4_bytes(1000)))
    code, reason, message = error_details(caught.value)
    assert (code, reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert message == "Внутренняя ошибка сервиса"  # nothing of the exception's own text
    assert harness.storage.objects == {}


async def test_an_untranslated_timeout_is_deadline_exceeded(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hangs(*args: object) -> None:
        raise TimeoutError

    monkeypatch.setattr(harness.outbox, "add", hangs)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.UploadVideo(upload_messages(mp4_bytes(1000)))
    code, reason, message = error_details(caught.value)
    assert (code, reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
    assert message == "Операция не завершилась вовремя, повторите попытку"
    assert harness.storage.objects == {}


async def test_health_reports_dependencies(harness: Harness) -> None:
    response = await harness.stub.Health(pb.HealthRequest())
    assert response.status == "ok"
    assert dict(response.dependencies) == {"storage": "ok", "database": "ok"}

    harness.outbox.down = True
    await harness.monitor.check_now()
    response = await harness.stub.Health(pb.HealthRequest())
    assert response.status == "degraded"
    assert response.dependencies["database"] == "database_unavailable"


async def test_listing_pages_and_stops_before_the_response_grows_too_large(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        event_id = f"00000000-0000-4000-8000-00000000000{i}"
        await harness.outbox.add(outbox_event(event_id, at=NOW + timedelta(seconds=i)))
    everything = await harness.stub.ListStatuses(pb.ListStatusesRequest())
    assert [o.event_id[-1] for o in everything.operations] == ["4", "3", "2", "1", "0"]
    assert (everything.total, everything.next_page_token) == (5, "")

    first = await harness.stub.ListStatuses(pb.ListStatusesRequest(page_size=2))
    assert [o.event_id[-1] for o in first.operations] == ["4", "3"]
    rest = await harness.stub.ListStatuses(
        pb.ListStatusesRequest(page_size=10, page_token=first.next_page_token)
    )
    assert [o.event_id[-1] for o in rest.operations] == ["2", "1", "0"]
    assert rest.next_page_token == ""

    # A response about to outgrow LIST_MAX_BYTES ends early, with a token for the rest.
    one = everything.operations[0].ByteSize() + servicer.LIST_ITEM_FRAMING
    monkeypatch.setattr(servicer, "LIST_MAX_BYTES", 2 * one)
    bounded = await harness.stub.ListStatuses(pb.ListStatusesRequest())
    assert [o.event_id[-1] for o in bounded.operations] == ["4", "3", "2"]
    assert bounded.next_page_token
    after = await harness.stub.ListStatuses(
        pb.ListStatusesRequest(page_token=bounded.next_page_token)
    )
    assert [o.event_id[-1] for o in after.operations] == ["1", "0"]


def _grpc_write(data: bytes, offset: int = 0) -> pb.WriteUploadRequest:
    return pb.WriteUploadRequest(
        write_offset=offset, checksummed_data=pb.ChecksummedData(content=data)
    )


def _http_write(data: bytes, offset: int = 0) -> pb.WriteUploadHttpRequest:
    return pb.WriteUploadHttpRequest(offset=offset, http_body=httpbody_pb2.HttpBody(data=data))


@pytest.mark.parametrize(
    ("rpc", "piece", "count", "message"),
    [
        ("WriteUpload", _grpc_write, 0, "первое сообщение должно назвать сессию"),
        ("WriteUpload", _grpc_write, 16, "первое сообщение должно назвать сессию"),
        ("WriteUploadHttp", _http_write, 0, "сессия не указана"),
        ("WriteUploadHttp", _http_write, 16, "сессия не указана"),
    ],
    ids=["grpc-empty", "grpc-unnamed", "http-empty", "http-unnamed"],
)
async def test_a_write_that_names_no_session_is_refused(
    harness: Harness,
    rpc: str,
    piece: Callable[[bytes], Message],
    count: int,
    message: str,
) -> None:
    """Each write RPC says in its own words what its stream lacked, after reading the rest of
    the stream (undrained, 16 MiB would stop at the flow-control window)."""
    sent = 0

    async def stream() -> AsyncIterator[Message]:
        nonlocal sent
        for _ in range(count):
            yield piece(b"\0" * MiB)
            sent += 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(harness.stub, rpc)(stream())
    assert error_details(caught.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPLOAD_ID",
        f"Некорректный идентификатор сессии загрузки: {message}",
    )
    assert sent == count


async def test_a_client_past_its_rate_of_lists_or_re_requests_is_told_when_to_call_again() -> None:
    lists, requests = FakeRateLimit(allowed=2), FakeRateLimit(allowed=1, retry_after_s=7.5)
    rates = CallRates(create_request=requests, list_statuses=lists)
    h = Harness(rates)
    await h.server.start()
    try:
        for _ in range(2):
            await h.stub.ListStatuses(pb.ListStatusesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as listed:
            await h.stub.ListStatuses(pb.ListStatusesRequest())
        # Counted before the request is looked at: an unknown video costs a call too.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await h.stub.CreateRequest(pb.CreateRequestRequest(video_id="not-a-uuid"))
        with pytest.raises(grpc.aio.AioRpcError) as requested:
            await h.stub.CreateRequest(pb.CreateRequestRequest(video_id="x"))
    finally:
        await h.channel.close(None)
        await h.server.stop(None)
    assert error_details(listed.value)[:2] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LIST_RATE_LIMITED",
    )
    assert retry_delay_s(listed.value) == 12.5
    assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(requested.value)[:2] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_RATE_LIMITED",
    )
    assert retry_delay_s(requested.value) == 7.5
    # Counted per client: without authentication, its address.
    assert lists.admitted == {"peer 127.0.0.1": 2}
    assert requests.admitted == {"peer 127.0.0.1": 1}
    assert rates.refusals == {"LIST_RATE_LIMITED": 1, "REQUEST_RATE_LIMITED": 1}


async def test_a_watch_starts_from_a_status_announced_before_its_record_was_marked(
    harness: Harness,
) -> None:
    """The relay announced `sent` and has not marked the record yet: WatchStatus starts from
    `sent`, not from the record's `new` (the announcement reached the hub before the watch
    subscribed, so it is never offered to it)."""
    new = outbox_event("6f1c7e2a-1111-4c4c-8d8d-222233334444")
    await harness.outbox.add(new)
    harness.hub.changed(replace(new, status=EventStatus.SENT, updated_at=NOW))
    request = pb.WatchStatusRequest(event_id=new.event_id)
    async for update in harness.stub.WatchStatus(request, timeout=5):
        assert update.status == "sent"
        break
