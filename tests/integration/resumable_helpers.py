"""Raw-protocol helpers for the resumable upload tests (the SDK has its own tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import grpc
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from devstack import free_port
from tests.helpers import sha256_hex
from tests.integration.processes import start_server
from tests.integration.storage_checks import (
    object_keys,
    object_sha256,
    pending_uploads,
    wait_until,
)

CHUNK = 256 * 1024


def metadata(data: bytes, **fields: Any) -> pb.UploadMetadata:
    return pb.UploadMetadata(
        filename="clip.mp4", size_bytes=len(data), sha256=sha256_hex(data), **fields
    )


def write_list(
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


def write_messages(
    upload_id: str,
    data: bytes,
    start: int,
    end: int | None = None,
    *,
    finish: bool = False,
    chunk: int = CHUNK,
    crc: bool = True,
) -> Iterator[pb.WriteUploadRequest]:
    """`write_list` as the iterator a stub call takes."""
    return iter(write_list(upload_id, data, start, end, finish=finish, chunk=chunk, crc=crc))


async def cut_write(
    stub: pb_grpc.CheckoutServiceAsyncStub,
    upload_id: str,
    data: bytes,
    start: int,
    cut: int,
    *,
    part_bytes: int,
) -> None:
    """Send data[start:cut] and break the stream off (the client cancels the call) once the
    server has made every whole part of it durable: a connection lost right after byte
    `cut` arrived."""
    sent = asyncio.Event()

    async def requests() -> AsyncIterator[pb.WriteUploadRequest]:
        for message in write_list(upload_id, data, start, cut):
            yield message
        sent.set()
        await asyncio.Event().wait()  # never ends by itself

    call = stub.WriteUpload(requests())
    durable = cut // part_bytes * part_bytes

    async def stored() -> bool:
        if not sent.is_set():
            return False
        query = pb.QueryUploadStatusRequest(upload_id=upload_id)
        return (await stub.QueryUploadStatus(query)).persisted_size >= durable

    try:
        await wait_until(stored, timeout_s=30, what=f"bytes up to {durable} stored")
    finally:
        call.cancel()


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


async def assert_nothing_left(
    s3: Minio, database: AsyncDatabase[dict[str, Any]], settings: ServerSettings, bucket: str
) -> None:
    """No object, outbox event, session or session fact; every multipart upload aborted."""
    assert await object_keys(s3, bucket) == []
    assert await database[settings.mongo_outbox_collection].count_documents({}) == 0
    facts = database[settings.mongo_upload_facts_collection]
    sessions = database[settings.mongo_upload_sessions_collection]
    assert await sessions.count_documents({}) == 0
    assert await facts.count_documents({}) == 0

    async def no_pending() -> bool:
        return await pending_uploads(s3, bucket) == 0

    await wait_until(no_pending, what="multipart uploads aborted")


@dataclass
class ServerProcess:
    """A real `python -m checkout_server` and a channel to it."""

    process: asyncio.subprocess.Process
    port: int
    channel: grpc.aio.Channel

    @property
    def stub(self) -> pb_grpc.CheckoutServiceAsyncStub:
        return pb_grpc.CheckoutServiceStub(self.channel)


class ServerProcesses:
    """Starts real server processes over one test's settings; `close` kills what is left."""

    def __init__(self, settings: ServerSettings, log_dir: Path) -> None:
        self._settings = settings
        self._log_dir = log_dir
        self._started: list[ServerProcess] = []

    async def start(
        self, port: int | None = None, env: dict[str, str] | None = None
    ) -> ServerProcess:
        port = port or free_port()
        log_path = self._log_dir / f"server-{len(self._started)}.log"
        process = await start_server(self._settings, port, log_path, **(env or {}))
        server = ServerProcess(process, port, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        self._started.append(server)
        return server

    async def close(self) -> None:
        for server in self._started:
            if server.process.returncode is None:
                server.process.kill()
                await server.process.wait()
            await server.channel.close(None)
