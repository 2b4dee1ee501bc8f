"""CheckoutService: a thin translation between protobuf messages and the domain.

No business logic lives here: requests become domain values, the pipeline or a port does the
work, results become responses. Errors are ServiceErrors, turned into statuses by the
ErrorInterceptor.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TypeVar

import grpc
from google.api import httpbody_pb2
from google.protobuf.message import Message

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

from .. import errors
from ..domain import EventStatus, UploadRequest
from ..health import DependencyMonitor
from ..ports import PageEnd
from ..status.service import StatusService, parse_uuid
from ..status.watch import Subscription, WatchHub
from ..upload.pipeline import UploadPipeline
from ..upload.resumable import ResumableUploads
from ..upload.session_writer import WriteChunk
from . import resumable as rpb
from .auth import bearer_token_or_none, current_principal
from .clients import Clients
from .downloads import Downloads
from .http_upload import open_http_upload
from .messages import operation, status_update, upload_request, upload_response
from .rates import CallRates
from .streams import drain

Context = grpc.aio.ServicerContext[object, object]
TERMINAL = frozenset({EventStatus.READY, EventStatus.FAILED})
_Write = TypeVar("_Write", pb.WriteUploadRequest, pb.WriteUploadHttpRequest)
_Message = TypeVar("_Message", bound=Message)


class CheckoutServicer(pb_grpc.CheckoutServiceServicer):
    def __init__(
        self,
        *,
        pipeline: UploadPipeline,
        status: StatusService,
        hub: WatchHub,
        monitor: DependencyMonitor,
        heartbeat_s: float = 15.0,
        default_bucket: str = "videos",
        resumable: ResumableUploads | None = None,
        rates: CallRates | None = None,
        clients: Clients | None = None,
        downloads: Downloads | None = None,
    ) -> None:
        self._downloads = downloads or Downloads()
        self._rates = rates or CallRates()
        self._clients = clients or Clients()
        self._resumable = resumable
        self._default_bucket = default_bucket
        self._pipeline = pipeline
        self._status = status
        self._hub = hub
        self._monitor = monitor
        self._heartbeat_s = heartbeat_s

    async def UploadVideo(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.UploadVideoRequest], context: Context
    ) -> pb.UploadVideoResponse:
        raw = aiter(request_iterator)  # drained, on refusal, without the pace
        messages = self._paced(raw)
        first = await anext(messages, None)
        if first is None:
            raise errors.MissingMetadata("поток пуст")
        if first.WhichOneof("payload") != "metadata":
            await drain(raw)
            raise errors.MissingMetadata("получен фрагмент файла до метаданных")
        meta = first.metadata

        async def chunks() -> AsyncIterator[bytes]:
            async for message in messages:
                if message.WhichOneof("payload") == "metadata":
                    raise errors.DuplicateMetadata()
                yield message.chunk

        return await self._upload(upload_request(meta), chunks(), raw, context)

    async def UploadVideoHttp(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.UploadVideoHttpRequest], context: Context
    ) -> pb.UploadVideoResponse:
        raw = aiter(request_iterator)  # drained, on refusal, without the pace
        messages = self._paced(raw)
        first = await anext(messages, None)
        if first is None:
            raise errors.EmptyFile()
        try:
            request, chunks = await open_http_upload(
                first, messages, default_bucket=self._default_bucket
            )
        except errors.ServiceError as refused:
            await _drain_unless_stalled(raw, refused)
            raise
        request = replace(request, owner=current_principal().client)
        return await self._upload(request, chunks, raw, context)

    def _paced(self, messages: AsyncIterator[_Message]) -> AsyncIterator[_Message]:
        """The client's messages, cut (UPLOAD_STALLED) when it falls below the uploads' pace:
        from the first message on, the metadata and a REST form's preamble included. A
        refused stream is drained from `messages` itself: a client gone quiet while it is
        drained was refused, not stalled."""
        return self._pipeline.admission.paced(messages, size=_message_bytes)

    async def _upload(
        self,
        request: UploadRequest,
        chunks: AsyncIterator[bytes],
        raw: AsyncIterator[Message],
        context: Context,
    ) -> pb.UploadVideoResponse:
        """Run the pipeline; on refusal, drain the client's stream (`raw`, its messages as they
        come) before the error goes out."""
        client = self._clients.of(request.owner, context)
        try:
            result = await self._pipeline.upload(request, chunks, client=client)
        except errors.ServiceError as refused:
            await _drain_unless_stalled(raw, refused)
            raise
        return upload_response(result)

    @property
    def resumable(self) -> ResumableUploads:
        if self._resumable is None:  # only unit tests build a servicer without
            raise errors.ServiceError("resumable uploads are not wired")
        return self._resumable

    async def StartResumableUpload(  # noqa: N802 (gRPC method name)
        self, request: pb.StartResumableUploadRequest, context: Context
    ) -> pb.StartResumableUploadResponse:
        crc32c = request.crc32c if request.HasField("crc32c") else None
        upload = upload_request(request.metadata)
        started = await self.resumable.start(
            upload, crc32c=crc32c, client=self._clients.of(upload.owner, context)
        )
        return rpb.start_response(started)

    async def WriteUpload(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.WriteUploadRequest], context: Context
    ) -> pb.WriteUploadResponse:
        # The session is a field of the stream's first message (the later ones may leave it out).
        return await self._write(
            request_iterator, rpb.grpc_chunks, "первое сообщение должно назвать сессию", context
        )

    async def WriteUploadHttp(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.WriteUploadHttpRequest], context: Context
    ) -> pb.WriteUploadResponse:
        # The session is the URL's path segment (Envoy copies it into every message).
        return await self._write(request_iterator, rpb.http_chunks, "сессия не указана", context)

    async def _write(
        self,
        request_iterator: AsyncIterator[_Write],
        chunks: Callable[[_Write, AsyncIterator[_Write]], AsyncIterator[WriteChunk]],
        no_session: str,
        context: Context,
    ) -> pb.WriteUploadResponse:
        """One WriteUpload stream, its messages read as `chunks`; InvalidUploadId(`no_session`)
        when the first message names no session. On refusal, the client's stream is drained
        before the error goes out."""
        raw = aiter(request_iterator)  # drained, on refusal, without the pace
        messages = self._paced(raw)
        owner = current_principal().client
        try:
            first = await anext(messages, None)
            if first is None or not first.upload_id:
                raise errors.InvalidUploadId(no_session)
            state = await self.resumable.write(
                first.upload_id,
                chunks(first, messages),
                owner=owner,
                client=self._clients.of(owner, context),
            )
        except errors.ServiceError as refused:
            await _drain_unless_stalled(raw, refused)
            raise
        return rpb.write_response(state)

    async def QueryUploadStatus(  # noqa: N802 (gRPC method name)
        self, request: pb.QueryUploadStatusRequest, context: Context
    ) -> pb.QueryUploadStatusResponse:
        state = await self.resumable.status(request.upload_id, owner=current_principal().client)
        return rpb.status_response(state)

    async def CancelUpload(  # noqa: N802 (gRPC method name)
        self, request: pb.CancelUploadRequest, context: Context
    ) -> pb.CancelUploadResponse:
        await self.resumable.cancel(request.upload_id, owner=current_principal().client)
        return pb.CancelUploadResponse(status="ok")

    async def WatchStatus(  # noqa: N802 (gRPC method name)
        self, request: pb.WatchStatusRequest, context: Context
    ) -> AsyncIterator[pb.StatusUpdate]:
        viewer = current_principal()
        client = self._clients.of(viewer.client, context)
        if not request.event_id:
            async for update in self._watch_all(client):
                yield update
            return
        event_id = parse_uuid(request.event_id, errors.InvalidEventId)
        # Subscribe before reading the current state, so no change falls in between.
        with self._hub.subscribe(event_id, client=client) as subscription:
            # What this server heard may be ahead of the record (a status announced before
            # its mark lands): start from the newer.
            event = self._hub.latest(
                await self._status.get(
                    event_id, viewer, may_check=lambda: self._rates.may_check_result(client)
                )
            )
            self._hub.track(event)
            yield status_update(event)
            while event.api_status not in TERMINAL:
                changes = await subscription.next(self._heartbeat_s)
                _check(subscription)
                newer = [c for c in changes if c.updated_at > event.updated_at]
                if not newer:
                    if not changes:
                        yield status_update(event, heartbeat=True)
                    continue
                changed = newer[-1]
                if changed.api_status != event.api_status:
                    yield status_update(changed)
                event = changed

    async def _watch_all(self, client: str) -> AsyncIterator[pb.StatusUpdate]:
        """Every change this caller may see (an uploader: of its own events), and a heartbeat
        after `heartbeat_s` without one."""
        viewer = current_principal()
        # Only the changes this caller may see reach its mailbox (an uploader: its own), so
        # other clients' uploads never wake this stream.
        with self._hub.subscribe(None, client=client, owner=viewer.owner_filter) as subscription:
            while True:
                changes = await subscription.next(self._heartbeat_s)
                _check(subscription)
                if not changes:
                    yield pb.StatusUpdate(heartbeat=True)
                for event in changes:
                    yield status_update(event)

    async def ListStatuses(  # noqa: N802 (gRPC method name)
        self, request: pb.ListStatusesRequest, context: Context
    ) -> pb.ListStatusesResponse:
        await self._rates.admit_list(self._clients.of(current_principal().client, context))
        listing = await self._status.list(
            status=request.status,
            page_size=request.page_size,
            page_token=request.page_token,
            viewer=current_principal(),
        )
        response = pb.ListStatusesResponse(total=-1 if listing.total is None else listing.total)
        size, last = 0, None
        async with contextlib.aclosing(listing.events) as events:
            async for event in events:
                if isinstance(event, PageEnd):  # out of time: the page ends here
                    response.next_page_token = event.cursor
                    break
                if len(response.operations) == listing.limit or size > LIST_MAX_BYTES:
                    assert last is not None
                    response.next_page_token = listing.cursor_of(last)  # more follow
                    break
                shown = response.operations.add()
                shown.CopyFrom(operation(event))
                size += shown.ByteSize() + LIST_ITEM_FRAMING
                last = event
        return response

    async def GetStatus(  # noqa: N802 (gRPC method name)
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        viewer = current_principal()
        client = self._clients.of(viewer.client, context)
        event = await self._status.get(
            request.event_id, viewer, may_check=lambda: self._rates.may_check_result(client)
        )
        return pb.GetStatusResponse(operation=operation(event))

    async def GetResult(  # noqa: N802 (gRPC method name)
        self, request: pb.GetResultRequest, context: Context
    ) -> pb.GetResultResponse:
        result = await self._status.result(
            request.event_id, current_principal(), bucket=request.bucket
        )
        response = pb.GetResultResponse(
            event_id=result.event.event_id,
            status=result.event.api_status.value,
            video_id=result.event.video_id,
        )
        if result.prediction is not None:
            response.prediction.update(result.prediction)
        return response

    async def GetVideo(  # noqa: N802 (gRPC method name)
        self, request: pb.GetVideoRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        viewer = current_principal()
        client = self._clients.of(viewer.client, context)
        with self._downloads.admit(client) as place:
            async with self._status.video(request.event_id, viewer, bucket=request.bucket) as video:
                first = True
                while (chunk := await video.read(VIDEO_CHUNK_BYTES)) or first:
                    body = httpbody_pb2.HttpBody(data=chunk)
                    if first:
                        body.content_type = VIDEO_CONTENT_TYPE
                        first = False
                    with self._downloads.sending(place, context):
                        yield body

    async def CreateRequest(  # noqa: N802 (gRPC method name)
        self, request: pb.CreateRequestRequest, context: Context
    ) -> pb.CreateRequestResponse:
        viewer = current_principal()
        await self._rates.admit_create_request(self._clients.of(viewer.client, context))
        event = await self._status.create_request(
            video_id=request.video_id, bucket=request.bucket, viewer=viewer
        )
        return pb.CreateRequestResponse(
            status="ok", event_id=event.event_id, video_id=event.video_id
        )

    async def Cleanup(  # noqa: N802 (gRPC method name)
        self, request: pb.CleanupRequest, context: Context
    ) -> pb.CleanupResponse:
        bearer = bearer_token_or_none(context.invocation_metadata() or ())
        report = await self._status.cleanup(bearer, current_principal())
        return pb.CleanupResponse(
            status="ok",
            deleted_objects=report.deleted_objects,
            deleted_events=report.deleted_events,
        )

    async def Health(  # noqa: N802 (gRPC method name)
        self, request: pb.HealthRequest, context: Context
    ) -> pb.HealthResponse:
        return pb.HealthResponse(
            status="ok" if self._monitor.healthy else "degraded",
            dependencies=dict(self._monitor.results),
        )


# GetVideo's messages: at most this much of the video each (the 4 MiB gRPC message limit and
# Envoy's transcoder take it whole); what one download holds in memory besides its buffers.
VIDEO_CHUNK_BYTES = 1024 * 1024
VIDEO_CONTENT_TYPE = "video/mp4"  # every stored object is an MP4 (its `ftyp` box checked)

# A listing stops before its response outgrows this (well under the 4 MiB gRPC message limit
# and Envoy's transcoding buffer) and gives a next_page_token instead.
LIST_MAX_BYTES = 3 * 1024 * 1024
LIST_ITEM_FRAMING = 4  # tag and length of one repeated message field


def _message_bytes(message: Message) -> int:
    return message.ByteSize()


async def _drain_unless_stalled(messages: AsyncIterator[Message], error: Exception) -> None:
    """Drain a refused client's stream (streams.py), unless it was cut for sending nothing:
    there is nothing to drain then, and waiting for it would only hold the answer back."""
    if not isinstance(error, errors.UploadStalled):
        await drain(messages)


def _check(subscription: Subscription) -> None:
    if subscription.closed:
        raise errors.ShuttingDown()
    if subscription.overflowed:
        raise errors.WatcherTooSlow()
