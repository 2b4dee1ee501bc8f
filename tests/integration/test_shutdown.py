"""SIGTERM of a real server process under load: dozens of uploads in flight and watchers.

What a graceful stop promises (docs/api.md, Health, and SHUTDOWN_GRACE_S): the health service says
NOT_SERVING first; watch streams end at once with SHUTTING_DOWN (a clean, retriable end, not a
broken stream); for SHUTDOWN_DRAIN_S new calls are answered SHUTTING_DOWN, then connections are
refused; uploads that complete within the grace period are stored, the rest are answered
SHUTTING_DOWN just before it ends and aborted; nothing is left behind; the process exits 0
within the grace period.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import ServerSettings
from devstack import free_port
from tests.helpers import MiB, error_details, mp4_bytes, sha256_hex
from tests.integration.processes import start_server
from tests.integration.storage_checks import object_keys, object_sha256, pending_uploads, wait_until

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

GRACE_S = 8
DRAIN_S = 6
CHUNK = 256 * 1024


async def gated_upload(
    data: bytes, first_bytes: int, sent: asyncio.Event, gate: asyncio.Event
) -> AsyncIterator[pb.UploadVideoRequest]:
    yield pb.UploadVideoRequest(
        metadata=pb.UploadMetadata(filename="v.mp4", size_bytes=len(data), sha256=sha256_hex(data))
    )
    for start in range(0, first_bytes, CHUNK):
        yield pb.UploadVideoRequest(chunk=data[start : min(start + CHUNK, first_bytes)])
    sent.set()
    await gate.wait()
    for start in range(first_bytes, len(data), CHUNK):
        yield pb.UploadVideoRequest(chunk=data[start : start + CHUNK])


async def outcome(call: Any) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return exc


async def test_sigterm_under_load(settings: ServerSettings, s3: Minio, tmp_path: Path) -> None:
    port = free_port()
    bucket = settings.default_bucket
    log_path = tmp_path / "server.log"
    process = await start_server(
        settings,
        port,
        log_path,
        SHUTDOWN_GRACE_S=str(GRACE_S),
        SHUTDOWN_DRAIN_S=str(DRAIN_S),
        WATCH_HEARTBEAT_S="0.5",
        # The 25 uploads below stand for many clients; here they share one address.
        UPLOAD_MAX_CONCURRENT_PER_CLIENT="64",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub: Stub = pb_grpc.CheckoutServiceStub(channel)

            # Load: 24 uploads mid-stream (12 will complete in the grace period, 12 never do)
            # and 30 watchers (all events, and single events).
            finishing = [mp4_bytes(3 * MiB, seed=i) for i in range(12)]
            stalled = [mp4_bytes(3 * MiB, seed=100 + i) for i in range(12)]
            gate_finish, gate_never = asyncio.Event(), asyncio.Event()
            sent = [asyncio.Event() for _ in range(24)]
            calls = [
                stub.UploadVideo(gated_upload(d, MiB, sent[i], gate_finish))
                for i, d in enumerate(finishing)
            ] + [
                stub.UploadVideo(gated_upload(d, MiB, sent[12 + i], gate_never))
                for i, d in enumerate(stalled)
            ]
            uploads = [asyncio.create_task(outcome(c)) for c in calls]
            for event in sent:
                await asyncio.wait_for(event.wait(), 60)
            done_before = await stub.UploadVideo(
                iter(
                    [
                        pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="a.mp4")),
                        pb.UploadVideoRequest(chunk=mp4_bytes(5000)),
                    ]
                ),
                timeout=30,
            )
            watch_calls = [stub.WatchStatus(pb.WatchStatusRequest()) for _ in range(20)] + [
                stub.WatchStatus(pb.WatchStatusRequest(event_id=done_before.event_id))
                for _ in range(10)
            ]

            subscribed = [asyncio.Event() for _ in watch_calls]

            async def watch(call: Any, first: asyncio.Event) -> Any:
                try:
                    async for _ in call:  # the current state, or a heartbeat
                        first.set()
                except grpc.aio.AioRpcError as exc:
                    return exc
                return None

            watchers = [
                asyncio.create_task(watch(c, e))
                for c, e in zip(watch_calls, subscribed, strict=True)
            ]
            for event in subscribed:
                await asyncio.wait_for(event.wait(), 30)

            # A health watch (as a load balancer keeps one): it sees every status change, also
            # once the listener is closed to new calls (a Check then finds nobody listening).
            health_watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=GRACE_S + 30)
            statuses = aiter(health_watch)
            first = await asyncio.wait_for(anext(statuses), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            assert not any(w.done() for w in watchers), "a watch ended before the signal"
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # NOT_SERVING first, while every upload in flight still runs. (The watch streams
            # end at the same moment, on streams of their own: which of the two this client
            # reads first is not ordered.)
            change = await asyncio.wait_for(anext(statuses), GRACE_S / 2)
            assert change.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not any(u.done() for u in uploads), "an upload ended before NOT_SERVING"

            # Watch streams end at once (well before the grace period is over), each with
            # SHUTTING_DOWN: a clean, retriable end, not a broken stream.
            ended = await asyncio.wait_for(asyncio.gather(*watchers), GRACE_S / 2)
            assert time.monotonic() - signalled < GRACE_S / 2
            assert all(isinstance(e, grpc.aio.AioRpcError) for e in ended), ended
            assert {error_details(e)[:2] for e in ended} == {
                (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
            }

            # During the drain new calls are answered SHUTTING_DOWN, on a new channel and on
            # one already connected, uploads too; grpc.health.v1 still answers NOT_SERVING.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
                refused = [
                    await outcome(
                        pb_grpc.CheckoutServiceStub(fresh).Health(pb.HealthRequest(), timeout=5)
                    ),
                    await outcome(stub.ListStatuses(pb.ListStatusesRequest(), timeout=5)),
                    await outcome(
                        stub.UploadVideo(
                            iter(
                                [
                                    pb.UploadVideoRequest(metadata=pb.UploadMetadata()),
                                    pb.UploadVideoRequest(chunk=mp4_bytes(5000)),
                                ]
                            ),
                            timeout=10,
                        )
                    ),
                ]
                checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert time.monotonic() - signalled < DRAIN_S, "the checks ran past the drain"
            assert all(isinstance(r, grpc.aio.AioRpcError) for r in refused), refused
            assert [error_details(r)[:2] for r in refused] == [
                (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
            ] * 3
            assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING

            # After the drain the listener is closed: a new connection is refused (UNAVAILABLE
            # from the transport, which clients retry elsewhere).
            async def connection_refused() -> bool:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as late:
                    got = await outcome(
                        pb_grpc.CheckoutServiceStub(late).Health(pb.HealthRequest(), timeout=2)
                    )
                if not isinstance(got, grpc.aio.AioRpcError):
                    return False
                keys = {item[0] for item in cast(Any, got.trailing_metadata() or ())}
                return got.code() is grpc.StatusCode.UNAVAILABLE and (
                    "grpc-status-details-bin" not in keys  # the transport's, not the server's
                )

            await wait_until(connection_refused, timeout_s=DRAIN_S + 10, what="refused")
            assert time.monotonic() - signalled >= DRAIN_S - 0.5

            # The uploads in flight: those that complete within the grace period are stored;
            # the others are cut when it ends.
            gate_finish.set()
            results = await asyncio.wait_for(asyncio.gather(*uploads), GRACE_S + 30)
            stored = results[:12]
            assert all(isinstance(r, pb.UploadVideoResponse) for r in stored), stored
            cut = results[12:]
            assert all(isinstance(r, grpc.aio.AioRpcError) for r in cut), cut
            assert {error_details(r)[:2] for r in cut} == {
                (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
            }
        code = await asyncio.wait_for(process.wait(), GRACE_S + 30)
        exited_s = time.monotonic() - signalled
        print(f"SIGTERM under load: exit {code} after {exited_s:.1f}s (grace {GRACE_S}s)")
        assert code == 0, log_path.read_text()[-3000:]
        # The drain and the grace period, then the cancelled uploads' aborts and closing the
        # clients: within the margin the deployment gives (compose: drain + grace + 8 s).
        assert exited_s < DRAIN_S + GRACE_S + 10

        # Nothing left behind: exactly the completed uploads, whole; no open multipart
        # upload; no event of a cut upload.
        expected = {r.object_key: d for r, d in zip(stored, finishing, strict=True)}
        expected[done_before.object_key] = mp4_bytes(5000)
        assert sorted(await object_keys(s3, bucket)) == sorted(expected)
        for key, data in expected.items():
            assert await object_sha256(s3, bucket, key) == (len(data), sha256_hex(data))
        assert await pending_uploads(s3, bucket) == 0
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
        try:
            database = client[settings.mongo_db]
            for collection in (settings.mongo_outbox_collection, settings.mongo_status_collection):
                ids = await database[collection].distinct("_id")
                assert sorted(ids) == sorted([r.event_id for r in stored] + [done_before.event_id])
        finally:
            await client.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
