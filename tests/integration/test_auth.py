"""Authentication and roles against the real servers: API keys from a file, the three roles,
what an uploader may see, the per-client upload rate limit, key reloads, and no token in the
logs (docs/configuration.md, Authentication)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.api import httpbody_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.auth.keys import entry, hash_key, new_key
from checkout_server.config import ServerSettings
from checkout_server.errors import ConfigError
from checkout_server.wiring.server import App, create_app
from tests.helpers import MiB, error_details, has_cyrillic, mp4_bytes, retry_delay_s
from tests.integration.metrics_scrape import scrape
from tests.integration.resumable_helpers import metadata, write_list
from tests.integration.storage_checks import object_keys, pending_uploads, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

if TYPE_CHECKING:  # the async stub type exists only in the generated type stubs
    Stub = pb_grpc.CheckoutServiceAsyncStub

Collection = AsyncCollection[dict[str, Any]]
PART = 5 * MiB  # the tests' UPLOAD_PART_BYTES (conftest)


@dataclass(frozen=True)
class Keys:
    """One key per client of the test's keys file."""

    camera_a: str  # uploader
    camera_b: str  # uploader
    reader: str
    admin: str
    path: Path


def replace_file(path: Path, text: str) -> None:
    """Change the keys file as docs/configuration.md advises: a new file renamed over the old
    one."""
    new = path.with_suffix(".new")
    new.write_text(text)
    new.replace(path)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    made = Keys(new_key(), new_key(), new_key(), new_key(), tmp_path / "api-keys.toml")
    made.path.write_text(
        entry("camera-a", "uploader", made.camera_a)
        + entry("camera-b", "uploader", made.camera_b)
        + entry("dashboard", "reader", made.reader)
        + entry("ops", "admin", made.admin)
    )
    return made


def auth_settings(settings: ServerSettings, keys: Keys, **changes: Any) -> ServerSettings:
    return settings.replace(
        auth_enabled=True,
        auth_keys_file=str(keys.path),
        **{"auth_reload_interval_s": 0.1, **changes},
    )


@pytest.fixture
async def secured(settings: ServerSettings, keys: Keys) -> AsyncIterator[App]:
    app = await create_app(auth_settings(settings, keys))
    await app.start()
    yield app
    await app.stop(grace_s=1.0)


@pytest.fixture
async def channel(secured: App) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return pb_grpc.CheckoutServiceStub(channel)


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def upload_messages(data: bytes, **meta: Any) -> Iterator[pb.UploadVideoRequest]:
    yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="v.mp4", **meta))
    for start in range(0, len(data), MiB):
        yield pb.UploadVideoRequest(chunk=data[start : start + MiB])


async def upload(stub: Stub, key: str, size: int = 2000, **meta: Any) -> pb.UploadVideoResponse:
    return await stub.UploadVideo(upload_messages(mp4_bytes(size), **meta), metadata=bearer(key))


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    """(code, reason) of a call that must fail; its message must be Russian."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code, reason, message = error_details(caught.value)
    assert has_cyrillic(message), message
    return code, reason


UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
DENIED = (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
EVENT_NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")


# --- Unauthenticated calls ------------------------------------------------------------------


async def test_upload_without_a_token_is_refused_and_stores_nothing(
    stub: Stub, s3: Minio, bucket: str, outbox_collection: Collection
) -> None:
    # Several MiB streamed after the metadata: the refusal still reaches the client as such.
    call = stub.UploadVideo(upload_messages(mp4_bytes(6 * MiB)))
    assert await refused(call) == UNAUTHENTICATED
    assert await object_keys(s3, bucket) == []
    assert await pending_uploads(s3, bucket) == 0
    assert await outbox_collection.count_documents({}) == 0


@pytest.mark.parametrize(
    "authorization",
    ["Bearer ck_not-a-key-of-the-file", "Basic dXNlcjpwYXNz", "Bearer", "ck_no-scheme"],
)
async def test_unknown_or_malformed_tokens_are_unauthenticated(
    stub: Stub, authorization: str
) -> None:
    metadata = (("authorization", authorization),)
    assert await refused(stub.ListStatuses(pb.ListStatusesRequest(), metadata=metadata)) == (
        UNAUTHENTICATED
    )
    assert await refused(stub.ListStatuses(pb.ListStatusesRequest())) == UNAUTHENTICATED


async def test_every_checkout_rpc_but_health_needs_a_token(stub: Stub) -> None:
    event_id = "00000000-0000-4000-8000-000000000000"
    calls = [
        stub.ListStatuses(pb.ListStatusesRequest()),
        stub.GetStatus(pb.GetStatusRequest(event_id=event_id)),
        stub.GetResult(pb.GetResultRequest(event_id=event_id)),
        stub.CreateRequest(pb.CreateRequestRequest(video_id=event_id)),
        stub.Cleanup(pb.CleanupRequest()),
        stub.UploadVideoHttp(iter([pb.UploadVideoHttpRequest()])),
    ]
    for call in calls:
        assert await refused(call) == UNAUTHENTICATED
    watch = stub.WatchStatus(pb.WatchStatusRequest())
    assert await refused(watch.read()) == UNAUTHENTICATED
    health = await stub.Health(pb.HealthRequest())
    assert health.status == "ok"


async def test_health_and_reflection_answer_without_a_token(channel: grpc.aio.Channel) -> None:
    checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    answer = await call.read()
    services = {s.name for s in answer.list_services_response.service}
    assert "checkout.v1.CheckoutService" in services


# --- Roles ----------------------------------------------------------------------------------


async def test_roles_refuse_what_they_may_not_do(stub: Stub, keys: Keys) -> None:
    video = await upload(stub, keys.camera_a)
    # A reader reads, and may neither upload, re-request nor clean up.
    assert await refused(upload(stub, keys.reader)) == DENIED
    request = pb.CreateRequestRequest(video_id=video.video_id)
    assert await refused(stub.CreateRequest(request, metadata=bearer(keys.reader))) == DENIED
    assert await refused(stub.Cleanup(pb.CleanupRequest(), metadata=bearer(keys.reader))) == (
        DENIED
    )
    # An uploader may not clean up.
    assert await refused(stub.Cleanup(pb.CleanupRequest(), metadata=bearer(keys.camera_a))) == (
        DENIED
    )
    # The refused calls changed nothing.
    listed = await stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(keys.reader))
    assert [o.event_id for o in listed.operations] == [video.event_id]


async def test_admin_cleans_up_without_an_admin_token(
    stub: Stub, keys: Keys, s3: Minio, bucket: str
) -> None:
    video = await upload(stub, keys.camera_a)
    report = await stub.Cleanup(pb.CleanupRequest(), metadata=bearer(keys.admin))
    assert (report.deleted_objects, report.deleted_events) == (1, 1)
    assert await object_keys(s3, bucket) == []
    assert video.event_id


# --- What an uploader sees ------------------------------------------------------------------


async def test_uploaders_see_only_their_own_events(
    stub: Stub, keys: Keys, s3: Minio, bucket: str
) -> None:
    mine = await upload(stub, keys.camera_a)
    theirs = await upload(stub, keys.camera_b)
    body = b'{"objects": []}'
    await s3.put_object(
        bucket, f"output/{theirs.video_id}.json", io.BytesIO(body), len(body), "application/json"
    )

    async def listed(key: str) -> tuple[list[str], int]:
        page = await stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(key))
        return sorted(o.event_id for o in page.operations), page.total

    assert await listed(keys.camera_a) == ([mine.event_id], 1)
    assert await listed(keys.camera_b) == ([theirs.event_id], 1)
    assert await listed(keys.reader) == (sorted([mine.event_id, theirs.event_id]), 2)
    assert await listed(keys.admin) == (sorted([mine.event_id, theirs.event_id]), 2)

    # Another client's event is "not found", exactly as a missing one.
    a = bearer(keys.camera_a)
    other = pb.GetStatusRequest(event_id=theirs.event_id)
    assert await refused(stub.GetStatus(other, metadata=a)) == EVENT_NOT_FOUND
    result = pb.GetResultRequest(event_id=theirs.event_id)
    assert await refused(stub.GetResult(result, metadata=a)) == EVENT_NOT_FOUND
    watch = stub.WatchStatus(pb.WatchStatusRequest(event_id=theirs.event_id), metadata=a)
    assert await refused(watch.read()) == EVENT_NOT_FOUND
    re_request = pb.CreateRequestRequest(video_id=theirs.video_id)
    assert await refused(stub.CreateRequest(re_request, metadata=a)) == (
        grpc.StatusCode.NOT_FOUND,
        "VIDEO_NOT_FOUND",
    )
    # Their own, and everything for a reader.
    own = await stub.GetStatus(pb.GetStatusRequest(event_id=mine.event_id), metadata=a)
    assert own.operation.event_id == mine.event_id
    read = await stub.GetResult(result, metadata=bearer(keys.reader))
    assert read.status == "ready"
    again = await stub.CreateRequest(pb.CreateRequestRequest(video_id=mine.video_id), metadata=a)
    assert await listed(keys.camera_a) == (sorted([mine.event_id, again.event_id]), 2)


async def test_watching_all_shows_an_uploader_only_its_own_changes(
    stub: Stub, keys: Keys, secured: App
) -> None:
    watch = stub.WatchStatus(pb.WatchStatusRequest(), metadata=bearer(keys.camera_b))
    reader_watch = stub.WatchStatus(pb.WatchStatusRequest(), metadata=bearer(keys.reader))

    async def subscribed() -> bool:  # changes count from the subscription on
        return secured.hub.watchers == 2

    await wait_until(subscribed, what="both watchers subscribed")
    theirs = await upload(stub, keys.camera_a)
    mine = await upload(stub, keys.camera_b)

    async def first_update(call: Any) -> pb.StatusUpdate:
        while True:
            update: pb.StatusUpdate = await call.read()
            if not update.heartbeat:
                return update

    seen_by_b = await asyncio.wait_for(first_update(watch), 30)
    assert seen_by_b.event_id == mine.event_id
    seen_by_reader = {(await asyncio.wait_for(first_update(reader_watch), 30)).event_id}
    seen_by_reader.add((await asyncio.wait_for(first_update(reader_watch), 30)).event_id)
    assert seen_by_reader == {theirs.event_id, mine.event_id}
    watch.cancel()
    reader_watch.cancel()


async def test_idempotency_keys_belong_to_their_client(stub: Stub, keys: Keys) -> None:
    first = await upload(stub, keys.camera_a, idempotency_key="batch-7")
    replayed = await upload(stub, keys.camera_a, idempotency_key="batch-7")
    other = await upload(stub, keys.camera_b, idempotency_key="batch-7")
    assert replayed.deduplicated
    assert replayed.event_id == first.event_id
    assert not other.deduplicated
    assert other.event_id != first.event_id


# --- The keys file --------------------------------------------------------------------------


async def test_keys_added_and_removed_count_without_a_restart(
    stub: Stub, keys: Keys, secured: App
) -> None:
    late = new_key()
    replace_file(keys.path, keys.path.read_text() + entry("late-camera", "uploader", late))

    async def accepted() -> bool:
        try:
            await stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(late))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            return False
        return True

    await wait_until(accepted, what="the added key to be accepted")
    replace_file(keys.path, entry("ops", "admin", keys.admin))

    async def camera_a_refused() -> bool:
        try:
            await stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(keys.camera_a))
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    await wait_until(camera_a_refused, what="the removed key to be refused")
    assert secured.keys is not None
    assert len(secured.keys) == 1


async def test_an_emptied_keys_file_refuses_every_key_until_it_is_valid_again(
    settings: ServerSettings, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    app = await create_app(auth_settings(settings, keys, metrics_addr="127.0.0.1:0"))
    await app.start()
    try:
        assert app.keys is not None
        assert app.metrics is not None
        ring, metrics_port = app.keys, app.metrics.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            assert (await upload(stub, keys.camera_a)).event_id
            valid = keys.path.read_text()
            replace_file(keys.path, "")  # emptied: fails closed, no key at all

            async def refused_everywhere() -> bool:
                return ring.refused

            await wait_until(refused_everywhere, what="the emptied file to be noticed")
            for key in (keys.camera_a, keys.reader, keys.admin):
                assert await refused(
                    stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(key))
                ) == (UNAUTHENTICATED)
            assert await refused(upload(stub, keys.camera_a)) == UNAUTHENTICATED
            samples = await scrape(metrics_port)
            assert samples["checkout_auth_keys"] == 0
            assert samples["checkout_auth_keys_loaded"] == 0
            assert samples['checkout_auth_keys_reload_errors_total{reason="empty"}'] == 1
            errors_logged = [
                r for r in caplog.records if r.levelno == logging.ERROR and "api keys" in r.msg
            ]
            assert len(errors_logged) == 1  # once for the change, not once per round
            assert "no key is accepted" in errors_logged[0].getMessage()

            replace_file(keys.path, valid)  # back: its keys count again

            async def accepted() -> bool:
                try:
                    await stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(keys.reader))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                        raise
                    return False
                return True

            await wait_until(accepted, what="the keys to count again")
            assert (await upload(stub, keys.camera_b)).event_id
            samples = await scrape(metrics_port)
            assert samples["checkout_auth_keys"] == 4
            assert samples["checkout_auth_keys_loaded"] == 1
            assert samples['checkout_auth_keys_reload_errors_total{reason="empty"}'] == 1
    finally:
        await app.stop(grace_s=1.0)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda path: path.unlink(), "missing"),
        (lambda path: replace_file(path, '[[keys]]\nclient = "x"\nrole = "owner"\n'), "invalid"),
    ],
)
async def test_a_deleted_or_invalid_keys_file_refuses_every_key(
    stub: Stub, keys: Keys, secured: App, spoil: Callable[[Path], None], reason: str
) -> None:
    assert secured.keys is not None
    ring = secured.keys
    listed = await stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(keys.reader))
    assert listed.total == 0
    spoil(keys.path)

    async def noticed() -> bool:
        return ring.reload_errors[reason] == 1

    await wait_until(noticed, what=f"the {reason} file to be noticed")
    assert await refused(
        stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(keys.reader))
    ) == (UNAUTHENTICATED)
    assert len(ring) == 0


# The reload interval of the revocation test, and how soon after a key leaves the file its
# streams must have ended: the next reload (at most one interval, plus reading the file) and
# the streams' own cleanup (a multipart upload aborted in MinIO) and answer.
REVOKE_RELOAD_S = 0.5
REVOKED_WITHIN_S = 2 * REVOKE_RELOAD_S + 2.0
REVOKED = (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


async def test_a_revoked_keys_open_streams_end_and_leave_nothing_behind(
    settings: ServerSettings,
    keys: Keys,
    s3: Minio,
    bucket: str,
    other_bucket: str,
    outbox_collection: Collection,
) -> None:
    """camera-a rotates its key: `old`, its second key, is removed from the file while it
    watches, uploads (gRPC and REST) and writes a resumable session; the key it keeps goes on
    working."""
    old = new_key()
    keys.path.write_text(keys.path.read_text() + entry("camera-a", "uploader", old))
    app = await create_app(
        auth_settings(
            settings,
            keys,
            auth_reload_interval_s=REVOKE_RELOAD_S,
            metrics_addr="127.0.0.1:0",
            upload_rate_per_minute=0,
        )
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            await _revoke_while_streaming(app, stub, keys, old, s3, bucket, other_bucket)
        # Nothing of the revoked upload: one object and one event, the honest upload's.
        assert len(await object_keys(s3, bucket)) == 1
        assert await pending_uploads(s3, bucket) == 0
        assert await outbox_collection.count_documents({}) == 1
        assert app.metrics is not None
        samples = await scrape(app.metrics.port)
        assert samples["checkout_auth_streams_revoked_total"] == 4
    finally:
        await app.stop(grace_s=1.0)


async def _revoke_while_streaming(
    app: App, stub: Stub, keys: Keys, old: str, s3: Minio, bucket: str, other_bucket: str
) -> None:
    # A watch, two uploads (gRPC, REST) and a resumable write, each past its first part, all
    # with the key to be revoked, each then waiting.
    watch = stub.WatchStatus(pb.WatchStatusRequest(), metadata=bearer(old))
    data = mp4_bytes(12 * MiB)
    held = asyncio.Event()  # never set: the streams wait

    async def stalled_upload() -> AsyncIterator[pb.UploadVideoRequest]:
        for message in upload_messages(data[: 6 * MiB]):
            yield message
        await held.wait()

    uploading = stub.UploadVideo(stalled_upload(), metadata=bearer(old))

    async def stalled_rest_upload() -> AsyncIterator[pb.UploadVideoHttpRequest]:
        """What Envoy sends of `curl --data-binary @v.mp4 -H 'Content-Type: video/mp4'`."""
        for start in range(0, 6 * MiB, MiB):
            body = httpbody_pb2.HttpBody(data=data[start : start + MiB])
            if not start:
                body.content_type = "video/mp4"
            yield pb.UploadVideoHttpRequest(http_body=body, filename="v.mp4")
        await held.wait()

    rest_uploading = stub.UploadVideoHttp(stalled_rest_upload(), metadata=bearer(old))
    session = await stub.StartResumableUpload(
        pb.StartResumableUploadRequest(metadata=metadata(data, bucket=other_bucket)),
        metadata=bearer(old),
    )

    async def stalled_write() -> AsyncIterator[pb.WriteUploadRequest]:
        for message in write_list(session.upload_id, data, 0, 6 * MiB):
            yield message
        await held.wait()

    writing = stub.WriteUpload(stalled_write(), metadata=bearer(old))

    async def all_streaming() -> bool:
        query = pb.QueryUploadStatusRequest(upload_id=session.upload_id)
        persisted = await stub.QueryUploadStatus(query, metadata=bearer(keys.camera_a))
        return (
            app.hub.watchers == 1
            and await pending_uploads(s3, bucket) == 2  # each upload's first part is stored
            and persisted.persisted_size == PART  # the write's first part is committed
        )

    await wait_until(all_streaming, what="the four streams under way")

    # The key leaves the file (renamed over it, as the docs advise).
    revoked_at = time.monotonic()
    replace_file(keys.path, keys.path.read_text().replace(entry("camera-a", "uploader", old), ""))

    async def ended(call: Any) -> tuple[grpc.StatusCode, str]:
        return await refused(asyncio.wait_for(call, REVOKED_WITHIN_S))

    async def watch_ended() -> tuple[grpc.StatusCode, str]:
        while True:  # heartbeats, if any, then the status
            await watch.read()

    outcomes = await asyncio.gather(
        ended(watch_ended()), ended(uploading), ended(rest_uploading), ended(writing)
    )
    assert list(outcomes) == [REVOKED] * 4
    assert time.monotonic() - revoked_at <= REVOKED_WITHIN_S

    # The revoked key opens nothing more; the key camera-a kept works on the same server.
    assert await refused(upload(stub, old)) == UNAUTHENTICATED
    honest = await upload(stub, keys.camera_a, size=6 * MiB)
    assert honest.object_key
    # The resumable session keeps its committed part: camera-a resumes it with its new key.
    query = pb.QueryUploadStatusRequest(upload_id=session.upload_id)
    kept = await stub.QueryUploadStatus(query, metadata=bearer(keys.camera_a))
    assert kept.persisted_size == PART
    assert await pending_uploads(s3, other_bucket) == 1


async def test_start_up_fails_without_a_readable_valid_keys_file(
    settings: ServerSettings, keys: Keys, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="AUTH_KEYS_FILE: cannot read"):
        await create_app(settings.replace(auth_enabled=True, auth_keys_file=str(missing)))
    keys.path.write_text('[[keys]]\nclient = "a:b"\nrole = "uploader"\nsha256 = "' + "0" * 64)
    with pytest.raises(ConfigError, match="AUTH_KEYS_FILE"):
        await create_app(auth_settings(settings, keys))


async def test_start_up_warns_when_authentication_is_off(
    settings: ServerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="checkout_server")
    app = await create_app(settings)
    await app.stop(grace_s=0)
    assert "authentication is off" in caplog.text


# --- Tokens never reach the logs ------------------------------------------------------------


async def test_tokens_never_appear_in_the_logs(
    stub: Stub, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = new_key()
    video = await upload(stub, keys.camera_a)
    await stub.GetStatus(pb.GetStatusRequest(event_id=video.event_id), metadata=bearer(keys.reader))
    await refused(stub.ListStatuses(pb.ListStatusesRequest(), metadata=bearer(wrong)))
    await refused(stub.Cleanup(pb.CleanupRequest(), metadata=bearer(keys.camera_a)))
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for record in caplog.records:
        logged = f"{record.getMessage()} {record.__dict__}"
        for secret in (keys.camera_a, keys.reader, wrong):
            assert secret not in logged
            assert hash_key(secret) not in logged


# --- Per-client upload rate limit -----------------------------------------------------------


async def test_a_client_over_its_upload_rate_is_refused_with_a_retry_hint(
    settings: ServerSettings,
    keys: Keys,
    s3: Minio,
    bucket: str,
    outbox_collection: Collection,
) -> None:
    app = await create_app(auth_settings(settings, keys, upload_rate_per_minute=2))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            first = [await upload(stub, keys.camera_a) for _ in range(2)]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await upload(stub, keys.camera_a, size=3 * MiB)
            code, reason, message = error_details(caught.value)
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPLOAD_RATE_LIMITED")
            assert has_cyrillic(message)
            assert 0 < retry_delay_s(caught.value) <= 60
            # Another client has a limit of its own.
            other = await upload(stub, keys.camera_b)
            assert other.event_id
        stored = sorted(await object_keys(s3, bucket))
        assert stored == sorted([u.object_key for u in first] + [other.object_key])
        assert await outbox_collection.count_documents({}) == 3
        assert app.pipeline.rate_limited_total == 1
    finally:
        await app.stop(grace_s=1.0)
