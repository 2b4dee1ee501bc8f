"""CheckoutService: a thin translation between protobuf messages and the domain.

No business logic lives here: requests become domain values, the pipeline or a port does the
work, results become responses. Errors are ServiceErrors, turned into statuses by the
ErrorInterceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

from . import errors
from .domain import UploadRequest, UploadResult
from .health import DependencyMonitor
from .upload import UploadPipeline

Context = grpc.aio.ServicerContext[object, object]


class CheckoutServicer(pb_grpc.CheckoutServiceServicer):
    def __init__(self, *, pipeline: UploadPipeline, monitor: DependencyMonitor) -> None:
        self._pipeline = pipeline
        self._monitor = monitor

    async def UploadVideo(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.UploadVideoRequest], context: Context
    ) -> pb.UploadVideoResponse:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None:
            raise errors.MissingMetadata("поток пуст")
        if first.WhichOneof("payload") != "metadata":
            raise errors.MissingMetadata("получен фрагмент файла до метаданных")
        meta = first.metadata

        async def chunks() -> AsyncIterator[bytes]:
            async for message in messages:
                if message.WhichOneof("payload") == "metadata":
                    raise errors.DuplicateMetadata()
                yield message.chunk

        request = UploadRequest(
            filename=meta.filename,
            content_type=meta.content_type,
            bucket=meta.bucket,
            size_bytes=meta.size_bytes,
            sha256=meta.sha256.lower(),
            idempotency_key=meta.idempotency_key,
        )
        try:
            result = await self._pipeline.upload(request, chunks())
        except errors.ServiceError:
            await _drain(messages)
            raise
        return upload_response(result)

    async def UploadVideoHttp(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.UploadVideoHttpRequest], context: Context
    ) -> pb.UploadVideoResponse:
        raise errors.Unimplemented("UploadVideoHttp")

    async def WatchStatus(  # noqa: N802 (gRPC method name)
        self, request: pb.WatchStatusRequest, context: Context
    ) -> AsyncIterator[pb.StatusUpdate]:
        raise errors.Unimplemented("WatchStatus")
        yield pb.StatusUpdate()  # pragma: no cover (makes this an async generator)

    async def ListStatuses(  # noqa: N802 (gRPC method name)
        self, request: pb.ListStatusesRequest, context: Context
    ) -> pb.ListStatusesResponse:
        raise errors.Unimplemented("ListStatuses")

    async def GetStatus(  # noqa: N802 (gRPC method name)
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        raise errors.Unimplemented("GetStatus")

    async def GetResult(  # noqa: N802 (gRPC method name)
        self, request: pb.GetResultRequest, context: Context
    ) -> pb.GetResultResponse:
        raise errors.Unimplemented("GetResult")

    async def CreateRequest(  # noqa: N802 (gRPC method name)
        self, request: pb.CreateRequestRequest, context: Context
    ) -> pb.CreateRequestResponse:
        raise errors.Unimplemented("CreateRequest")

    async def Cleanup(  # noqa: N802 (gRPC method name)
        self, request: pb.CleanupRequest, context: Context
    ) -> pb.CleanupResponse:
        raise errors.Unimplemented("Cleanup")

    async def Health(  # noqa: N802 (gRPC method name)
        self, request: pb.HealthRequest, context: Context
    ) -> pb.HealthResponse:
        return pb.HealthResponse(
            status="ok" if self._monitor.healthy else "degraded",
            dependencies=dict(self._monitor.results),
        )


# When an upload is refused mid-stream, the rest of the client's stream is read and dropped
# (up to these bounds) before the error is sent. grpc-python's asyncio client otherwise may
# report its own INTERNAL "execute_batch" error instead of our status when its next write
# meets the closed stream (grpc/grpc#36066). Nothing read here is stored.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_S = 5.0


async def _drain(messages: AsyncIterator[pb.UploadVideoRequest]) -> None:
    drained = 0

    async def read_rest() -> None:
        nonlocal drained
        async for message in messages:
            drained += message.ByteSize()
            if drained > DRAIN_MAX_BYTES:
                return

    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, errors.ServiceError):
        await asyncio.wait_for(read_rest(), DRAIN_MAX_S)


def upload_response(result: UploadResult) -> pb.UploadVideoResponse:
    event = result.event
    return pb.UploadVideoResponse(
        status="ok",
        event_id=event.event_id,
        video_id=event.video_id,
        bucket=event.bucket,
        object_key=event.object_key,
        size_bytes=event.size_bytes,
        sha256=event.sha256,
        deduplicated=result.deduplicated,
    )
