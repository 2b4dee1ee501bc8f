"""Crash points of a resumable upload: the server SIGKILLs itself (UPLOAD_FAILPOINT) after a
part is stored but not committed, after its commit document, after the object is complete
but has no event, and after the outbox insert; a new server process then resumes the session.
Each ends with the file stored once, byte for byte, exactly one outbox event and no
multipart upload left open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_server.config import ServerSettings
from tests.helpers import MiB, error_details, mp4_bytes
from tests.integration.resumable_helpers import (
    ServerProcesses,
    assert_one_video,
    metadata,
    write_messages,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Database = AsyncDatabase[dict[str, Any]]
PART = 5 * MiB
FAST_LEASE = {"UPLOAD_LEASE_TTL_S": "3", "UPLOAD_CLOCK_SKEW_S": "0.5"}


@pytest.fixture
async def servers(settings: ServerSettings, tmp_path: Path) -> AsyncIterator[ServerProcesses]:
    processes = ServerProcesses(settings, tmp_path)
    yield processes
    await processes.close()


@pytest.mark.parametrize(
    ("failpoint", "persisted_after"),
    [
        ("after_part", 0),  # the part is in MinIO, its commit never written
        ("after_commit", PART),
        ("after_complete", 12 * MiB + 7),  # all parts committed, the object complete
        ("after_outbox", None),  # the event is written: the session is finished
    ],
)
async def test_a_server_killed_at_a_crash_point_loses_nothing_durable(
    servers: ServerProcesses,
    s3: Minio,
    mongo_database: Database,
    settings: ServerSettings,
    failpoint: str,
    persisted_after: int | None,
) -> None:
    data = mp4_bytes(12 * MiB + 7, seed=61)
    doomed = await servers.start(env={**FAST_LEASE, "UPLOAD_FAILPOINT": failpoint})
    started = await doomed.stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=metadata(data))
    )
    upload_id = started.upload_id

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await doomed.stub.WriteUpload(write_messages(upload_id, data, 0, finish=True))
    assert caught.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}
    assert await doomed.process.wait() == -9  # SIGKILL: no cleanup ran

    again = await servers.start(env=FAST_LEASE)
    try:
        state = await again.stub.QueryUploadStatus(pb.QueryUploadStatusRequest(upload_id=upload_id))
    except grpc.aio.AioRpcError as exc:  # say why, with the server's reason
        raise AssertionError(f"status after the crash: {error_details(exc)}") from exc
    if persisted_after is None:
        assert state.WhichOneof("write_status") == "result"
    else:
        assert state.persisted_size == persisted_after
    offset = state.persisted_size if persisted_after is not None else len(data)
    # The client resumes from what the server says (the dead server's lease runs out first).
    try:
        response = await again.stub.WriteUpload(
            write_messages(upload_id, data, offset, finish=True)
        )
    except grpc.aio.AioRpcError as exc:
        raise AssertionError(f"resume after the crash: {error_details(exc)}") from exc
    await assert_one_video(s3, mongo_database, settings, response.result, data)
    if failpoint == "after_outbox":
        assert response.result.deduplicated  # the finish happened before the crash
