"""The SDK's own logic over a real gRPC channel to a scripted in-process server: error
mapping, upload retries with one key, early answers mid-stream, checksum checks, metadata."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_client import (
    AsyncCheckoutClient,
    ChecksumMismatch,
    InvalidArgument,
    Result,
    RetryPolicy,
    Unavailable,
    Unknown,
    UploadProgress,
    exception_class_for,
    from_grpc_error,
    open_channel,
)
from checkout_client.cli import EXIT_INVALID, EXIT_NOT_FOUND, build_parser, exit_code_for
from tests.helpers import mp4_bytes, sha256_hex

pytestmark = pytest.mark.timeout(20)

Context = grpc.aio.ServicerContext[Any, Any]
QUICK = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


def rich_error(code: grpc.StatusCode, message: str, reason: str) -> grpc.aio.AioRpcError:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain="checkout.v1", metadata={"k": "v"})
    )
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message, "")


def test_every_code_has_its_class() -> None:
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        assert exception_class_for(code).code is code


def test_rich_status_becomes_a_typed_error() -> None:
    error = from_grpc_error(
        rich_error(grpc.StatusCode.INVALID_ARGUMENT, "Файл пустой", "EMPTY_FILE")
    )
    assert isinstance(error, InvalidArgument)
    assert (error.code, error.reason, error.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "EMPTY_FILE",
        "Файл пустой",
    )
    assert error.metadata == {"k": "v"}
    assert str(error) == "Файл пустой (EMPTY_FILE)"
    assert not error.retriable


def test_a_retry_hint_makes_an_error_retriable_and_sets_the_wait() -> None:
    info, hint = any_pb2.Any(), any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="TOO_MANY_UPLOADS", domain="checkout.v1"))
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromSeconds(7)
    hint.Pack(retry)
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_pb2.Status(code=code.value[0], message="много", details=[info, hint])
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    call = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, "много", "")
    error = from_grpc_error(call)

    assert (error.reason, error.retry_after_s, error.retriable) == ("TOO_MANY_UPLOADS", 7, True)
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    assert policy.delay_s(1, error.retry_after_s) == 7  # the server asks for longer
    assert policy.delay_s(1, None) <= 0.01
    # Without a hint, RESOURCE_EXHAUSTED (e.g. WATCHER_TOO_SLOW) is not retried as such.
    plain = from_grpc_error(rich_error(code, "медленно", "WATCHER_TOO_SLOW"))
    assert (plain.retry_after_s, plain.retriable) == (None, False)


def test_plain_status_has_no_reason() -> None:
    plain = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down", ""
    )
    error = from_grpc_error(plain)
    assert isinstance(error, Unavailable)
    assert (error.reason, error.message, error.retriable) == ("", "down", True)


def test_retry_policy_backoff_is_bounded() -> None:
    policy = RetryPolicy(attempts=4, initial_backoff_s=1, max_backoff_s=3, multiplier=2)
    for failed, (low, high) in enumerate([(0.5, 1), (1, 2), (1.5, 3), (1.5, 3)], start=1):
        assert low <= policy.backoff_s(failed) <= high
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_a_token_needs_tls() -> None:
    with pytest.raises(ValueError, match="TLS"):
        open_channel("localhost:1", token="t")


def test_cli_exit_codes_and_options_on_both_sides() -> None:
    assert exit_code_for(InvalidArgument("x")) == EXIT_INVALID
    assert exit_code_for(exception_class_for(grpc.StatusCode.NOT_FOUND)("x")) == EXIT_NOT_FOUND
    assert exit_code_for(Unknown("x")) == 1
    parser = build_parser()
    before = parser.parse_args(["--addr", "h:1", "--json", "status"])
    after = parser.parse_args(["status", "--addr", "h:1", "--json"])
    assert (before.addr, before.json) == (after.addr, after.json) == ("h:1", True)


# --- a scripted server ------------------------------------------------------------------------


class Scripted(pb_grpc.CheckoutServiceServicer):
    """UploadVideo fails UNAVAILABLE `fail_first` times (after reading `fail_after` chunks),
    or answers right after the metadata when `answer_early` (as a replayed key does)."""

    def __init__(self) -> None:
        self.fail_first = 0
        self.fail_after = 2
        self.answer_early = False
        self.wrong_sha = False
        self.metadatas: list[pb.UploadMetadata] = []
        self.authorization = ""

    async def UploadVideo(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.UploadVideoRequest], context: Context
    ) -> pb.UploadVideoResponse:
        messages = aiter(request_iterator)
        first = await anext(messages)
        self.metadatas.append(first.metadata)
        response = pb.UploadVideoResponse(status="ok", event_id="e", video_id="e")
        if self.answer_early:
            return response  # the rest of the stream is never read
        data = b""
        async for message in messages:
            data += message.chunk
            if len(self.metadatas) <= self.fail_first and len(data) >= self.fail_after:
                # Like the real server: read the rest before failing (grpc/grpc#36066).
                async for _ in messages:
                    pass
                await context.abort(grpc.StatusCode.UNAVAILABLE, "хранилище недоступно")
        response.size_bytes = len(data)
        response.sha256 = "0" * 64 if self.wrong_sha else sha256_hex(data)
        return response

    async def Cleanup(  # noqa: N802 (gRPC method name)
        self, request: pb.CleanupRequest, context: Context
    ) -> pb.CleanupResponse:
        self.authorization = str(dict(context.invocation_metadata() or ()).get("authorization"))
        return pb.CleanupResponse(status="ok", deleted_objects=2, deleted_events=1)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, AsyncCheckoutClient]]:
    servicer = Scripted()  # type: ignore[abstract]  # only the RPCs these tests call
    server = grpc.aio.server()
    pb_grpc.add_CheckoutServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with AsyncCheckoutClient(f"127.0.0.1:{port}", retry=QUICK) as client:
        yield servicer, client
    await server.stop(None)


async def test_upload_retries_unavailable_with_the_same_key(
    scripted: tuple[Scripted, AsyncCheckoutClient], tmp_path: Path
) -> None:
    servicer, client = scripted
    servicer.fail_first = 2
    data = mp4_bytes(100_000)
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    events: list[UploadProgress] = []

    upload = await client.upload(path, chunk_size=1000, on_progress=events.append)

    assert upload.attempts == 3
    keys = {m.idempotency_key for m in servicer.metadatas}
    assert keys == {upload.idempotency_key}
    assert all(m.size_bytes == len(data) for m in servicer.metadatas)
    assert servicer.metadatas[0].sha256 == ""  # not known before the first full read
    assert {e.attempt for e in events} == {1, 2, 3}
    assert events[-1] == UploadProgress(len(data), len(data), 3)
    assert upload.sha256 == sha256_hex(data)


async def test_upload_gives_up_after_the_policy(
    scripted: tuple[Scripted, AsyncCheckoutClient],
) -> None:
    servicer, client = scripted
    servicer.fail_first = 10
    with pytest.raises(Unavailable) as caught:
        await client.upload(io.BytesIO(mp4_bytes(10_000)), chunk_size=1000)
    assert caught.value.message == "хранилище недоступно"
    assert len(servicer.metadatas) == QUICK.attempts


async def test_unseekable_source_is_not_retried(
    scripted: tuple[Scripted, AsyncCheckoutClient],
) -> None:
    servicer, client = scripted
    servicer.fail_first = 1

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    with pytest.raises(Unavailable):
        await client.upload(Pipe(mp4_bytes(10_000)), chunk_size=1000)  # type: ignore[arg-type]
    assert len(servicer.metadatas) == 1
    assert servicer.metadatas[0].size_bytes == 0  # unknown


async def test_an_early_answer_ends_the_upload(
    scripted: tuple[Scripted, AsyncCheckoutClient],
) -> None:
    servicer, client = scripted
    servicer.answer_early = True
    for _ in range(5):
        upload = await client.upload(io.BytesIO(mp4_bytes(8 << 20)), chunk_size=64 * 1024)
        assert upload.event_id == "e"


async def test_a_different_server_hash_is_reported(
    scripted: tuple[Scripted, AsyncCheckoutClient],
) -> None:
    servicer, client = scripted
    servicer.wrong_sha = True
    with pytest.raises(ChecksumMismatch) as caught:
        await client.upload(io.BytesIO(mp4_bytes(5000)))
    assert caught.value.reason == "CLIENT_CHECKSUM_MISMATCH"
    assert caught.value.event_id == "e"


async def test_cleanup_sends_the_admin_token(
    scripted: tuple[Scripted, AsyncCheckoutClient],
) -> None:
    servicer, plaintext = scripted
    with pytest.raises(ValueError, match="TLS"):
        await plaintext.cleanup(admin_token="tok")
    assert servicer.authorization == ""  # nothing was sent
    # Over a channel of the caller's own (here plaintext too: its owner's choice).
    async with (
        grpc.aio.insecure_channel(plaintext.address) as channel,
        AsyncCheckoutClient(channel=channel) as client,
    ):
        report = await client.cleanup(admin_token="tok")
    assert servicer.authorization == "Bearer tok"
    assert (report.deleted_objects, report.deleted_events) == (2, 1)


async def test_bad_chunk_size(scripted: tuple[Scripted, AsyncCheckoutClient]) -> None:
    _, client = scripted
    with pytest.raises(ValueError, match="chunk_size"):
        await client.upload(io.BytesIO(b"x"), chunk_size=5 << 20)


def test_a_stream_broken_in_transport_is_retriable() -> None:
    # grpc-python reports a write on a reset stream as INTERNAL "Failed execute_batch" and drops
    # the real status (grpc/grpc#36066): the SDK treats it as a lost connection.
    from checkout_client import Internal, Unavailable, from_grpc_error

    lost = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Internal error from Core",
        debug_error_string='Failed "execute_batch": (<SendMessageOperation>,)',
    )
    error = from_grpc_error(lost)
    assert isinstance(error, Unavailable)
    assert error.retriable
    assert error.reason == "STREAM_BROKEN"

    server_bug = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Внутренняя ошибка сервиса",
        debug_error_string="INTERNAL:Внутренняя ошибка сервиса",
    )
    assert type(from_grpc_error(server_bug)) is Internal


def test_a_retry_policy_with_bad_bounds_fails_when_made() -> None:
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        RetryPolicy(initial_backoff_s=5, max_backoff_s=1)


def test_a_results_whole_numbers_are_ints_as_over_rest() -> None:
    prediction = struct_pb2.Struct()
    prediction.update(
        {
            "frames": [{"index": 10, "timestamp_s": 1.5, "boxes": [[0, 2.25]]}],
            "count": 3,
            "huge": 2.0**60,  # beyond 2**53 a double is not a whole number one can trust
            "name": "centerface",
            "empty": None,
        }
    )
    response = pb.GetResultResponse(event_id="e", video_id="v", status="ready")
    response.prediction.CopyFrom(prediction)
    got = Result.from_pb(response).prediction
    assert got == {
        "frames": [{"index": 10, "timestamp_s": 1.5, "boxes": [[0, 2.25]]}],
        "count": 3,
        "huge": 2.0**60,
        "name": "centerface",
        "empty": None,
    }
    assert type(got["frames"][0]["index"]) is int
    assert type(got["count"]) is int
    assert type(got["huge"]) is float
    assert Result.from_pb(pb.GetResultResponse(status="sent")).prediction is None
