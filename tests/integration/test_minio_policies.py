"""The MinIO users of deploy/minio/ against the real MinIO: the users and policies made through
MinIO's admin API as the compose init job makes them (`mc admin user add`, `policy create`,
`policy attach`), then the real adapters run with each user's keys. Every call a process makes
goes through; what it must not do is refused AccessDenied.

The policy files name the bucket `videos` (compose's DEFAULT_BUCKET); each test puts its own
buckets in their place, so that tests never share one."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from miniopy_async.api import Minio
from miniopy_async.credentials.providers import StaticProvider
from miniopy_async.error import S3Error
from miniopy_async.minioadmin import MinioAdmin

from checkout_runner.adapters.minio_store import MinioObjectStore
from checkout_runner.errors import StorageError as RunnerStorageError
from checkout_runner.errors import VideoMissing
from checkout_server.adapters.minio_multipart import MinioMultipart
from checkout_server.adapters.minio_storage import MinioStorage
from checkout_server.config import MiB, ServerSettings
from checkout_server.errors import StorageError
from checkout_server.wiring.clients import minio_client
from checkout_server.wiring.server import create_app
from devstack import MinIO
from devstack._paths import REPO_ROOT

POLICIES = REPO_ROOT / "deploy" / "minio"
# The bucket the policy files name.
POLICY_BUCKET = "videos"
ROOT = ("minioadmin", "minioadmin")  # the session MinIO's root user


@dataclass(frozen=True)
class Users:
    bucket: str  # the one the policies were given
    other_bucket: str  # one they do not name
    server: tuple[str, str]
    runner: tuple[str, str]


def policy_for(name: str, bucket: str, tmp_path: Path) -> Path:
    """deploy/minio/<name>.json with `bucket` wherever it names POLICY_BUCKET."""
    text = (POLICIES / f"{name}.json").read_text()
    resources = [r for s in json.loads(text)["Statement"] for r in s["Resource"]]
    # The rewrite below is what makes the files this test's: they name no other bucket.
    assert resources
    assert all(r.split(":::")[1].split("/")[0] == POLICY_BUCKET for r in resources), resources
    path = tmp_path / f"{name}.json"
    path.write_text(text.replace(f":::{POLICY_BUCKET}", f":::{bucket}"))
    return path


@pytest.fixture
async def users(minio: MinIO, s3: Minio, settings: ServerSettings, tmp_path: Path) -> Users:
    """The buckets and the two users with their policies, as the init job makes them."""
    bucket = settings.default_bucket
    other = next(b for b in settings.allowed_buckets if b != bucket)
    for name in (bucket, other):
        await s3.make_bucket(name)
    suffix = uuid.uuid4().hex[:12]
    made: dict[str, tuple[str, str]] = {}
    async with aiohttp.ClientSession() as session:
        admin = MinioAdmin(minio.endpoint, StaticProvider(*ROOT), secure=False, session=session)
        for role in ("server", "runner"):
            user = (f"checkout-{role}-{suffix}", uuid.uuid4().hex)
            policy = f"checkout-{role}-{suffix}"
            await admin.user_add(*user)
            await admin.policy_add(policy, str(policy_for(f"checkout-{role}", bucket, tmp_path)))
            await admin.attach_policy([policy], user=user[0])
            made[role] = user
    return Users(bucket=bucket, other_bucket=other, server=made["server"], runner=made["runner"])


@pytest.fixture
async def server_client(settings: ServerSettings, users: Users) -> AsyncIterator[Minio]:
    """The server's own client (wiring/clients.py) with the server user's keys."""
    access, secret = users.server
    client = minio_client(settings.replace(minio_access_key=access, minio_secret_key=secret))
    yield client
    await client.close_session()  # type: ignore[no-untyped-call]


@pytest.fixture
async def runner_client(minio: MinIO, users: Users) -> AsyncIterator[Minio]:
    """A client as the runner's wiring builds it, with the runner user's keys."""
    access, secret = users.runner
    client = Minio(minio.endpoint, access_key=access, secret_key=secret, secure=False)
    yield client
    await client.close_session()  # type: ignore[no-untyped-call]


def refused(exc: BaseException) -> str:
    """The S3 error code behind an adapter's error."""
    cause = exc.__cause__
    assert isinstance(cause, S3Error), repr(exc)
    return str(cause.code)


async def put(s3: Minio, bucket: str, key: str, data: bytes = b"{}") -> None:
    await s3.put_object(bucket, key, io.BytesIO(data), len(data))


# --- the server ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_the_server_user_does_all_the_server_does(
    users: Users, server_client: Minio, s3: Minio
) -> None:
    storage, multipart = MinioStorage(server_client), MinioMultipart(server_client)
    bucket = users.bucket
    # Start-up: the bucket the init job made exists; health.
    await storage.ensure_bucket(bucket)
    await storage.ping()
    # Health lists the buckets: MinIO answers with those the user may list, not the other.
    assert [b.name for b in await server_client.list_buckets()] == [bucket]
    # A small upload (one PUT) and a large one (multipart), read back, listed.
    small = storage.open_writer(bucket, "input/small.mp4", "video/mp4")
    await small.finish([b"small video"])
    large = storage.open_writer(bucket, "input/large.mp4", "video/mp4")
    await large.write_part([b"x" * (5 * MiB)])
    await large.finish([b"tail"])
    assert (await storage.read(bucket, "input/small.mp4", max_bytes=100)) == b"small video"
    stat = await storage.stat(bucket, "input/large.mp4")
    assert stat is not None
    assert stat.size_bytes == 5 * MiB + 4
    page = await storage.list_page(bucket, "input/", start_after="", limit=10)
    assert [o.key for o in page] == ["input/large.mp4", "input/small.mp4"]
    # A writer aborted after its first part: the multipart upload aborted.
    aborted = storage.open_writer(bucket, "input/aborted.mp4", "video/mp4")
    await aborted.write_part([b"y" * (5 * MiB)])
    await aborted.abort()
    # Resumable sessions: create, parts, list (the sweeper), complete, read back, abort.
    upload_id = await multipart.create_multipart(bucket, "input/resumable.mp4", "video/mp4")
    etag = await multipart.upload_part(bucket, "input/resumable.mp4", upload_id, 1, [b"abc"])
    open_ones = await multipart.list_multipart(bucket, "input/")
    assert [u.upload_id for u in open_ones] == [upload_id]
    await multipart.complete_multipart(bucket, "input/resumable.mp4", upload_id, [(1, etag)])
    assert (await multipart.object_size(bucket, "input/resumable.mp4")) == 3
    sha = await multipart.object_sha256(bucket, "input/resumable.mp4")
    assert sha == (3, hashlib.sha256(b"abc").hexdigest())
    gone = await multipart.create_multipart(bucket, "input/gone.mp4", "video/mp4")
    await multipart.abort_multipart(bucket, "input/gone.mp4", gone)
    assert await multipart.list_multipart(bucket, "input/") == []
    await multipart.delete_object(bucket, "input/resumable.mp4")
    assert await multipart.object_size(bucket, "input/resumable.mp4") is None
    # Results: the runner's JSON read; missing ones are None, not refusals.
    await put(s3, bucket, "output/v1.json", b'{"ok": true}')
    assert (await storage.read(bucket, "output/v1.json", max_bytes=100)) == b'{"ok": true}'
    assert (await storage.stat(bucket, "output/v1.json")) is not None
    assert (await storage.read(bucket, "output/none.json", max_bytes=100)) is None
    assert (await storage.stat(bucket, "output/none.json")) is None
    # Cleanup: deletes both prefixes; a single delete too.
    await storage.delete(bucket, "input/small.mp4")
    assert await storage.delete_prefix(bucket, "input/") == 1  # large.mp4
    assert await storage.delete_prefix(bucket, "output/") == 1
    assert [o async for o in s3.list_objects(bucket, recursive=True)] == []


@pytest.mark.timeout(60)
async def test_the_server_user_cannot_write_results_or_touch_anything_else(
    users: Users, server_client: Minio, s3: Minio
) -> None:
    storage, multipart = MinioStorage(server_client), MinioMultipart(server_client)
    bucket, other = users.bucket, users.other_bucket
    await put(s3, other, "input/theirs.mp4")
    await put(s3, bucket, "elsewhere/x.json")
    refusals: dict[str, str] = {}

    async def attempt(what: str, call: Awaitable[object]) -> None:
        """Record what became of the call: the S3 code it was refused with, or `done`."""
        try:
            await call
        except StorageError as exc:
            refusals[what] = refused(exc)
        else:
            refusals[what] = "done"

    writer = storage.open_writer(bucket, "output/forged.json", "application/json")
    await attempt("put a result", writer.finish([b"{}"]))
    await attempt("multipart under output/", multipart.create_multipart(bucket, "output/f", "x"))
    await attempt(
        "put outside the prefixes", storage.open_writer(bucket, "x.mp4", "x").finish([b"1"])
    )
    await attempt(
        "read outside the prefixes", storage.read(bucket, "elsewhere/x.json", max_bytes=9)
    )
    await attempt("delete outside the prefixes", storage.delete(bucket, "elsewhere/x.json"))
    await attempt("read another bucket", storage.read(other, "input/theirs.mp4", max_bytes=9))
    await attempt("stat another bucket", storage.stat(other, "input/theirs.mp4"))
    await attempt(
        "put into another bucket", storage.open_writer(other, "input/a", "x").finish([b"1"])
    )
    await attempt(
        "list another bucket", storage.list_page(other, "input/", start_after="", limit=9)
    )
    await attempt("list uploads of another bucket", multipart.list_multipart(other, "input/"))
    await attempt("delete in another bucket", storage.delete(other, "input/theirs.mp4"))
    await attempt("make a bucket", storage.ensure_bucket(f"new-{uuid.uuid4().hex[:12]}"))
    assert refusals == dict.fromkeys(refusals, "AccessDenied")
    # Nothing was written, and what was there is still there.
    assert await s3.stat_object(other, "input/theirs.mp4")
    assert await s3.stat_object(bucket, "elsewhere/x.json")
    with pytest.raises(S3Error, match="NoSuchKey"):
        await s3.stat_object(bucket, "output/forged.json")


# --- the runner ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_the_runner_user_reads_videos_and_writes_results(
    users: Users, runner_client: Minio, s3: Minio, tmp_path: Path
) -> None:
    store, bucket = MinioObjectStore(runner_client), users.bucket
    await put(s3, bucket, "input/v1.mp4", b"video bytes")
    dest = tmp_path / "v1.mp4"
    assert await store.download(bucket, "input/v1.mp4", dest, max_bytes=100) == 11
    assert dest.read_bytes() == b"video bytes"
    # A video deleted meanwhile is missing, not refused; so is a result not yet written.
    with pytest.raises(VideoMissing):
        await store.download(bucket, "input/gone.mp4", tmp_path / "gone", max_bytes=100)
    assert await store.written_at(bucket, "output/v1.json") is None
    await store.put_json(bucket, "output/v1.json", b'{"faces": 0}')
    assert isinstance(await store.written_at(bucket, "output/v1.json"), datetime)
    response = await s3.get_object(bucket, "output/v1.json")
    assert await response.read() == b'{"faces": 0}'
    response.close()


@pytest.mark.timeout(60)
async def test_the_runner_user_cannot_write_videos_delete_or_touch_anything_else(
    users: Users, runner_client: Minio, s3: Minio, tmp_path: Path
) -> None:
    store, bucket, other = MinioObjectStore(runner_client), users.bucket, users.other_bucket
    await put(s3, bucket, "input/v1.mp4")
    await put(s3, bucket, "output/v1.json")
    await put(s3, other, "input/theirs.mp4")
    refusals: dict[str, str] = {}

    async def attempt(what: str, call: Awaitable[object]) -> None:
        """Record what became of the call: the S3 code it was refused with, or `done`."""
        try:
            await call
        except RunnerStorageError as exc:
            refusals[what] = refused(exc)
        else:
            refusals[what] = "done"

    await attempt("write a video", store.put_json(bucket, "input/v2.mp4", b"{}"))
    await attempt("write outside the prefixes", store.put_json(bucket, "v2.json", b"{}"))
    await attempt(
        "read another bucket",
        store.download(other, "input/theirs.mp4", tmp_path / "t", max_bytes=9),
    )
    await attempt("stat another bucket", store.written_at(other, "input/theirs.mp4"))
    await attempt("write into another bucket", store.put_json(other, "output/v1.json", b"{}"))
    assert refusals == dict.fromkeys(refusals, "AccessDenied")
    # What its adapter never does, through the same client: delete, list, make buckets.
    for what, call in {
        "delete a video": runner_client.remove_object(bucket, "input/v1.mp4"),
        "delete a result": runner_client.remove_object(bucket, "output/v1.json"),
        "make a bucket": runner_client.make_bucket(f"new-{uuid.uuid4().hex[:12]}"),
    }.items():
        with pytest.raises(S3Error) as caught:
            await call
        assert caught.value.code == "AccessDenied", what
    with pytest.raises(S3Error) as listing:
        _ = [o async for o in runner_client.list_objects(bucket, prefix="input/")]
    assert listing.value.code == "AccessDenied"
    assert await s3.stat_object(bucket, "input/v1.mp4")
    assert await s3.stat_object(bucket, "output/v1.json")


# --- the relay -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_there_is_no_relay_user(settings: ServerSettings, users: Users) -> None:
    """The relay uses no object storage and gets no keys (test_compose.py): a key of the name
    a relay user would have is unknown to MinIO."""
    client = minio_client(
        settings.replace(minio_access_key="checkout-relay", minio_secret_key=uuid.uuid4().hex)
    )
    try:
        with pytest.raises(StorageError) as caught:
            await MinioStorage(client).read(users.bucket, "input/v1.mp4", max_bytes=9)
    finally:
        await client.close_session()  # type: ignore[no-untyped-call]
    assert refused(caught.value) == "InvalidAccessKeyId"


# --- the server's start-up ----------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_the_server_starts_healthy_with_its_user(
    settings: ServerSettings, users: Users
) -> None:
    """The whole start-up (the bucket found, not made; the indexes) and the health check."""
    access, secret = users.server
    app = await create_app(
        settings.replace(
            minio_access_key=access,
            minio_secret_key=secret,
            allowed_buckets=frozenset({users.bucket}),
        )
    )
    await app.start()
    try:
        assert app.monitor.healthy, app.monitor.results
        await app.monitor.check_now()
        assert app.monitor.results["storage"] == "ok", app.monitor.results
    finally:
        await app.stop(grace_s=1.0)


@pytest.mark.timeout(60)
async def test_the_server_does_not_start_with_a_bucket_its_user_may_not_use(
    settings: ServerSettings, users: Users
) -> None:
    """ALLOWED_BUCKETS naming a bucket the policy does not: start-up stops at once."""
    access, secret = users.server
    with pytest.raises(StorageError) as caught:
        await create_app(settings.replace(minio_access_key=access, minio_secret_key=secret))
    assert refused(caught.value) == "AccessDenied"
