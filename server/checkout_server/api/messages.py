"""Protobuf <-> domain for the messages several RPCs share: an upload's metadata and its
reply (UploadVideo, the REST upload, every resumable RPC that ends an upload), an event as an
Operation or a StatusUpdate, timestamps."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from checkout_api.checkout.v1 import checkout_pb2 as pb

from ..domain import OutboxEvent, UploadRequest, UploadResult
from .auth import current_principal


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def upload_request(meta: pb.UploadMetadata) -> UploadRequest:
    """An upload's metadata (UploadVideo's first message, StartResumableUpload's) as the
    domain's request, owned by the caller."""
    return UploadRequest(
        filename=meta.filename,
        content_type=meta.content_type,
        bucket=meta.bucket,
        size_bytes=meta.size_bytes,
        sha256=meta.sha256.lower(),
        idempotency_key=meta.idempotency_key,
        owner=current_principal().client,
    )


def upload_response(result: UploadResult) -> pb.UploadVideoResponse:
    """A stored upload's reply, however it came (one stream, REST, a resumable session)."""
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


def operation(event: OutboxEvent) -> pb.Operation:
    return pb.Operation(
        event_id=event.event_id,
        status=event.api_status.value,
        created_at=timestamp(event.created_at),
        updated_at=timestamp(event.updated_at),
        video_id=event.video_id,
        bucket=event.bucket,
        object_key=event.object_key,
        filename=event.filename,
        size_bytes=event.size_bytes,
        error=event.error,
    )


def status_update(event: OutboxEvent, *, heartbeat: bool = False) -> pb.StatusUpdate:
    return pb.StatusUpdate(
        event_id=event.event_id,
        status=event.api_status.value,
        video_id=event.video_id,
        updated_at=timestamp(event.updated_at),
        error=event.error,
        heartbeat=heartbeat,
    )
