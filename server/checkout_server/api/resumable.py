"""Protobuf <-> domain for the resumable upload RPCs (the servicer's methods call these)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from checkout_api.checkout.v1 import checkout_pb2 as pb

from .. import errors
from ..upload.resumable import SessionState
from ..upload.session_writer import WriteChunk
from .messages import timestamp, upload_response


def start_response(state: SessionState) -> pb.StartResumableUploadResponse:
    response = pb.StartResumableUploadResponse(persisted_size=state.persisted_size)
    if state.session is not None:
        response.upload_id = state.session.upload_id
        response.part_size_bytes = state.session.part_bytes
        response.expire_time.CopyFrom(timestamp(state.session.expires_at))
    if state.result is not None:
        response.result.CopyFrom(upload_response(state.result))
    return response


def write_response(state: SessionState) -> pb.WriteUploadResponse:
    if state.result is not None:
        return pb.WriteUploadResponse(result=upload_response(state.result))
    return pb.WriteUploadResponse(persisted_size=state.persisted_size)


def status_response(state: SessionState) -> pb.QueryUploadStatusResponse:
    response = pb.QueryUploadStatusResponse()
    if state.result is not None:
        response.result.CopyFrom(upload_response(state.result))
    else:
        response.persisted_size = state.persisted_size
    if state.session is not None:
        response.size_bytes = state.session.size_bytes
        response.part_size_bytes = state.session.part_bytes
        response.expire_time.CopyFrom(timestamp(state.session.expires_at))
    return response


async def grpc_chunks(
    first: pb.WriteUploadRequest, rest: AsyncIterator[pb.WriteUploadRequest]
) -> AsyncIterator[WriteChunk]:
    """The stream's messages as chunks; every message names the first one's session, if any."""
    message: pb.WriteUploadRequest | None = first
    while message is not None:
        if message.upload_id and message.upload_id != first.upload_id:
            raise errors.InvalidUploadId("сессия сменилась посреди потока")
        data = message.checksummed_data
        yield WriteChunk(
            offset=message.write_offset,
            data=data.content,
            crc32c=data.crc32c if data.HasField("crc32c") else None,
            finish=message.finish_write,
        )
        message = await anext(rest, None)


async def http_chunks(
    first: pb.WriteUploadHttpRequest, rest: AsyncIterator[pb.WriteUploadHttpRequest]
) -> AsyncIterator[WriteChunk]:
    """The raw body pieces as chunks from `?offset=`; `?finish=true` ends the last one."""
    offset = first.offset
    message: pb.WriteUploadHttpRequest | None = first
    while message is not None:
        data = message.http_body.data
        if data:
            yield WriteChunk(offset=offset, data=data)
            offset += len(data)
        message = await anext(rest, None)
    if first.finish or offset == first.offset:  # an empty body still has its offset checked
        yield WriteChunk(offset=offset, data=b"", finish=first.finish)
