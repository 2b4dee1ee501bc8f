"""The SDK's resumable upload over a real gRPC channel to a scripted in-process server: after
each of the listed codes it backs off, asks for persisted_size, seeks and goes on; other
codes end the upload; OUT_OF_RANGE with persisted_size seeks without asking."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import google_crc32c
import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_client import (
    AsyncCheckoutClient,
    NotFound,
    RetryPolicy,
    Unavailable,
    UploadProgress,
)
from tests.helpers import mp4_bytes, sha256_hex

pytestmark = pytest.mark.timeout(20)

Context = grpc.aio.ServicerContext[Any, Any]
QUICK = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
PART = 10_000


def status_with(code: grpc.StatusCode, reason: str, **metadata: str) -> grpc.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="checkout.v1", metadata=metadata))
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message="сбой", details=[detail])
    )


class Sessions(pb_grpc.CheckoutServiceServicer):
    """One session, stored in whole parts of PART bytes; each WriteUpload stream in turn fails
    with the next of `failures` after reading `fail_after` bytes past where it started."""

    def __init__(self) -> None:
        self.data = b""  # what is persisted
        self.size = 0
        self.failures: list[tuple[grpc.StatusCode, str, dict[str, str]]] = []
        self.fail_after = 25_000
        self.starts: list[int] = []  # each stream's first offset
        self.queries = 0

    async def StartResumableUpload(  # noqa: N802 (gRPC method name)
        self, request: pb.StartResumableUploadRequest, context: Context
    ) -> pb.StartResumableUploadResponse:
        self.size = request.metadata.size_bytes
        return pb.StartResumableUploadResponse(upload_id="u", persisted_size=len(self.data))

    async def QueryUploadStatus(  # noqa: N802 (gRPC method name)
        self, request: pb.QueryUploadStatusRequest, context: Context
    ) -> pb.QueryUploadStatusResponse:
        self.queries += 1
        return pb.QueryUploadStatusResponse(persisted_size=len(self.data), size_bytes=self.size)

    async def WriteUpload(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.WriteUploadRequest], context: Context
    ) -> pb.WriteUploadResponse:
        pending = b""
        first: int | None = None
        async for message in request_iterator:
            content = message.checksummed_data.content
            assert google_crc32c.value(content) == message.checksummed_data.crc32c
            if first is None:
                first = message.write_offset
                self.starts.append(first)
                assert first <= len(self.data)
            pending += content
            if self.failures and first + len(pending) - len(self.data) >= self.fail_after:
                whole = (first + len(pending)) // PART * PART
                if whole > len(self.data):  # whole parts only, never decreasing
                    self.data = (self.data[:first] + pending)[:whole]
                code, reason, metadata = self.failures.pop(0)
                if reason == "UPLOAD_OFFSET_OUT_OF_RANGE":
                    metadata = {"persisted_size": str(len(self.data))}
                status = status_with(code, reason, **metadata)
                async for _ in request_iterator:  # read the rest first, as the server does
                    pass
                await context.abort(status.code, status.details, status.trailing_metadata)
            if message.finish_write:
                self.data = self.data[:first] + pending
                digest = hashlib.sha256(self.data).hexdigest()
                result = pb.UploadVideoResponse(
                    status="ok", event_id="e", size_bytes=len(self.data), sha256=digest
                )
                return pb.WriteUploadResponse(result=result)
        return pb.WriteUploadResponse(persisted_size=len(self.data))


@pytest.fixture
async def sessions() -> AsyncIterator[tuple[Sessions, AsyncCheckoutClient]]:
    servicer = Sessions()  # type: ignore[abstract]  # only the RPCs these tests call
    server = grpc.aio.server()
    pb_grpc.add_CheckoutServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with AsyncCheckoutClient(f"127.0.0.1:{port}", retry=QUICK) as client:
        yield servicer, client
    await server.stop(None)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
    ],
)
async def test_a_broken_stream_resumes_from_persisted_size(
    sessions: tuple[Sessions, AsyncCheckoutClient], tmp_path: Path, code: grpc.StatusCode
) -> None:
    servicer, client = sessions
    servicer.failures = [(code, "X", {}), (code, "X", {})]
    data = mp4_bytes(100_000, seed=3)
    (tmp_path / "v.mp4").write_bytes(data)
    seen: list[UploadProgress] = []

    upload = await client.upload(
        tmp_path / "v.mp4", resumable=True, chunk_size=3000, on_progress=seen.append
    )

    assert (upload.size_bytes, upload.sha256) == (len(data), sha256_hex(data))
    assert servicer.starts == [0, 20_000, 40_000]  # each time from the persisted size
    assert servicer.queries == 2
    assert upload.attempts == 3
    assert {p.resumed_from_bytes for p in seen} == {0, 20_000, 40_000}
    assert upload.upload_id == "u"


async def test_out_of_range_seeks_to_the_persisted_size_in_its_details(
    sessions: tuple[Sessions, AsyncCheckoutClient], tmp_path: Path
) -> None:
    servicer, client = sessions
    servicer.failures = [(grpc.StatusCode.OUT_OF_RANGE, "UPLOAD_OFFSET_OUT_OF_RANGE", {})]
    data = mp4_bytes(50_000, seed=4)
    (tmp_path / "v.mp4").write_bytes(data)
    upload = await client.upload(tmp_path / "v.mp4", resumable=True, chunk_size=3000)
    assert upload.sha256 == sha256_hex(data)
    assert servicer.queries == 0  # the details said where to go on
    assert servicer.starts == [0, 20_000]


async def test_other_codes_end_a_resumable_upload(
    sessions: tuple[Sessions, AsyncCheckoutClient], tmp_path: Path
) -> None:
    servicer, client = sessions
    servicer.failures = [(grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND", {})]
    (tmp_path / "v.mp4").write_bytes(mp4_bytes(50_000, seed=5))
    with pytest.raises(NotFound) as caught:
        await client.upload(tmp_path / "v.mp4", resumable=True, chunk_size=3000)
    assert caught.value.reason == "UPLOAD_NOT_FOUND"
    assert servicer.starts == [0]


async def test_failures_without_progress_are_bounded_by_the_policy(
    sessions: tuple[Sessions, AsyncCheckoutClient], tmp_path: Path
) -> None:
    servicer, client = sessions
    servicer.fail_after = 1  # every stream fails at once: no progress ever
    servicer.failures = [(grpc.StatusCode.UNAVAILABLE, "X", {})] * 5
    (tmp_path / "v.mp4").write_bytes(mp4_bytes(50_000, seed=6))
    with pytest.raises(Unavailable):
        await client.upload(tmp_path / "v.mp4", resumable=True, chunk_size=3000)
    assert len(servicer.starts) == QUICK.attempts
