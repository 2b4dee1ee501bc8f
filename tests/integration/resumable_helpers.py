"""Raw-protocol helpers for the resumable upload tests (the SDK has its own tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import google_crc32c
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from tests.helpers import sha256_hex
from tests.integration.storage_checks import object_keys, object_sha256, pending_uploads

CHUNK = 256 * 1024


def metadata(data: bytes, **fields: Any) -> pb.UploadMetadata:
    return pb.UploadMetadata(
        filename="clip.mp4", size_bytes=len(data), sha256=sha256_hex(data), **fields
    )


def write_messages(
    upload_id: str,
    data: bytes,
    start: int,
    end: int | None = None,
    *,
    finish: bool = False,
    chunk: int = CHUNK,
    crc: bool = True,
) -> list[pb.WriteUploadRequest]:
    """Messages carrying data[start:end] (to the end by default), each with its CRC32C."""
    end = len(data) if end is None else end
    out = []
    for offset in range(start, end, chunk):
        piece = data[offset : min(offset + chunk, end)]
        body = pb.ChecksummedData(content=piece)
        if crc:
            body.crc32c = google_crc32c.value(piece)
        out.append(
            pb.WriteUploadRequest(upload_id=upload_id, write_offset=offset, checksummed_data=body)
        )
    if finish:
        if out:
            out[-1].finish_write = True
        else:
            out.append(
                pb.WriteUploadRequest(upload_id=upload_id, write_offset=end, finish_write=True)
            )
    return out


async def cut_write(
    stub: pb_grpc.CheckoutServiceAsyncStub, upload_id: str, data: bytes, start: int, cut: int
) -> None:
    """Send data[start:cut], then break the stream off (the client cancels the call)."""
    sent = asyncio.Event()

    async def requests() -> AsyncIterator[pb.WriteUploadRequest]:
        for message in write_messages(upload_id, data, start, cut):
            yield message
        sent.set()
        await asyncio.Event().wait()  # never ends by itself

    call = stub.WriteUpload(requests())
    waiting = asyncio.ensure_future(sent.wait())
    await asyncio.wait({waiting, asyncio.ensure_future(call)}, return_when=asyncio.FIRST_COMPLETED)
    call.cancel()  # wherever the bytes are now: on the wire, read or stored
    waiting.cancel()


async def assert_one_video(
    s3: Minio,
    database: AsyncDatabase[dict[str, Any]],
    settings: ServerSettings,
    result: pb.UploadVideoResponse,
    data: bytes,
) -> None:
    """The object holds exactly `data`, there is exactly one outbox event (the result's),
    and no other object or open multipart upload in the bucket."""
    bucket = result.bucket
    assert (result.size_bytes, result.sha256) == (len(data), sha256_hex(data))
    assert await object_sha256(s3, bucket, result.object_key) == (len(data), sha256_hex(data))
    assert await object_keys(s3, bucket) == [result.object_key]
    assert await pending_uploads(s3, bucket) == 0
    outbox = database[settings.mongo_outbox_collection]
    events = await outbox.find({}, {"_id": 1}).to_list()
    assert events == [{"_id": result.event_id}]
