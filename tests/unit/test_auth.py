"""API keys, the permission table, bearer parsing, the rate limit and its place in the
upload pipeline, without servers (the real server's behaviour: integration/test_auth.py)."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_server import errors
from checkout_server.adapters.rate_limits import MemoryUploadRateLimit
from checkout_server.api.auth import (
    METHOD_PERMISSIONS,
    ROLE_PERMISSIONS,
    Permission,
    bearer_token,
    permission_of,
)
from checkout_server.auth.keys import KeyRing, hash_key, main, new_key, parse_keys
from checkout_server.config import ServerSettings
from checkout_server.domain import ANONYMOUS, Principal, Role, UploadRequest
from checkout_server.errors import ConfigError
from checkout_server.upload.admission import Admission
from checkout_server.upload.pipeline import UploadPipeline
from tests.fakes import FakeOutbox, FakeRateLimit, FakeStorage
from tests.helpers import mp4_bytes, outbox_event
from tests.unit.test_upload_pipeline import LIMITS, chunked

pytestmark = pytest.mark.timeout(10)

DIGEST = "a" * 64


def entry(client: str = "cam", role: str = "uploader", sha256: str = DIGEST) -> str:
    return f'[[keys]]\nclient = "{client}"\nrole = "{role}"\nsha256 = "{sha256}"\n'


# --- The keys file ---------------------------------------------------------------------------


def test_a_keys_file_maps_hashes_to_clients_and_roles() -> None:
    keys = parse_keys(entry() + entry("ops", "admin", "b" * 64), source="f")
    assert keys == {
        DIGEST: Principal(client="cam", role=Role.UPLOADER),
        "b" * 64: Principal(client="ops", role=Role.ADMIN),
    }


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[keys]\n", "not valid TOML"),
        ('owner = "x"\n' + entry(), "only \\[\\[keys\\]\\] tables"),
        ('keys = "x"\n', "only \\[\\[keys\\]\\] tables"),
        ("", "holds no keys"),  # also a file caught between truncation and rewrite
        ("# no keys yet\n", "holds no keys"),
        (entry(role="owner"), "key 1: role must be one of uploader, reader, admin"),
        (entry(client="a:b"), "key 1: client must match"),
        (entry(client=""), "key 1: client must match"),
        (entry(sha256="A" * 64), "key 1: sha256 must be 64 lowercase hex"),
        (entry(sha256="ab"), "key 1: sha256 must be 64 lowercase hex"),
        (entry() + entry("other"), "key 2: the same sha256 twice"),
        ('[[keys]]\nclient = "cam"\nrole = "reader"\n', "key 1: needs exactly client"),
        (entry() + 'extra = "x"\n', "key 1: needs exactly client"),
    ],
)
def test_a_bad_keys_file_is_a_config_error_naming_the_entry(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"AUTH_KEYS_FILE: f.*{says}"):
        parse_keys(text, source="f")


def test_new_keys_are_random_and_found_by_their_hash(tmp_path: Path) -> None:
    key, other = new_key(), new_key()
    assert key.startswith("ck_")
    assert len(key) >= 40
    assert key != other
    path = tmp_path / "keys.toml"
    path.write_text(entry("cam", "reader", hash_key(key)))
    ring = KeyRing(path, reload_interval_s=1.0)
    assert ring.authenticate(key) == Principal(client="cam", role=Role.READER)
    assert ring.authenticate(other) is None
    assert ring.authenticate(hash_key(key)) is None  # the stored hash is no key


async def test_the_ring_reloads_a_changed_file_and_keeps_its_keys_on_a_bad_one(
    tmp_path: Path,
) -> None:
    key, later = new_key(), new_key()
    path = tmp_path / "keys.toml"
    path.write_text(entry("cam", "uploader", hash_key(key)))
    ring = KeyRing(path, reload_interval_s=0.5)
    assert await ring.round() == 0.5
    assert ring.reloads_total == 0  # unchanged: not read again

    path.write_text(entry("cam", "uploader", hash_key(later)))
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    await ring.round()
    assert (ring.authenticate(key), ring.reloads_total) == (None, 1)
    assert ring.authenticate(later) is not None

    path.write_text("not toml [")
    await ring.round()
    assert ring.reload_errors_total == 1
    assert ring.authenticate(later) is not None
    path.unlink()
    await ring.round()
    assert ring.reload_errors_total == 2
    assert ring.authenticate(later) is not None


def test_checkout_keys_new_prints_an_entry_that_admits_the_key(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert main(["new", "--client", "camera-7", "--role", "uploader"]) == 0
    key = err.getvalue().strip().splitlines()[-1]
    path = tmp_path / "keys.toml"
    path.write_text(out.getvalue())
    assert key not in out.getvalue()  # stdout can go into the file; the key cannot
    ring = KeyRing(path, reload_interval_s=1.0)
    assert ring.authenticate(key) == Principal(client="camera-7", role=Role.UPLOADER)


# --- Bearer tokens and permissions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer ck_1")], "ck_1"),
        ([("authorization", "bearer  ck_2 ")], "ck_2"),
        ([("x-other", "1"), ("authorization", b"Bearer ck_3")], "ck_3"),
    ],
)
def test_bearer_token_is_read_from_the_authorization_metadata(
    metadata: list[tuple[str, str | bytes]], token: str
) -> None:
    assert bearer_token(metadata) == token


@pytest.mark.parametrize(
    ("metadata", "detail"),
    [
        ([], "токен не передан"),
        ([("authorization", "Basic dTpw")], "ожидается схема Bearer"),
        ([("authorization", "Bearer ")], "ожидается схема Bearer"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "несколько раз"),
    ],
)
def test_missing_or_malformed_authorization_is_unauthenticated(
    metadata: list[tuple[str, str | bytes]], detail: str
) -> None:
    with pytest.raises(errors.Unauthenticated) as caught:
        bearer_token(metadata)
    assert detail in caught.value.text


def test_every_rpc_of_the_service_has_a_declared_permission() -> None:
    service = pb.DESCRIPTOR.services_by_name["CheckoutService"]
    assert {m.name for m in service.methods} == set(METHOD_PERMISSIONS)
    for method in service.methods:
        assert (
            permission_of(f"/{service.full_name}/{method.name}") is METHOD_PERMISSIONS[method.name]
        )


def test_unknown_methods_need_the_admin_role_and_health_needs_none() -> None:
    assert permission_of("/checkout.v1.CheckoutService/NewRpc") is Permission.ADMIN
    assert permission_of("/other.Service/Call") is Permission.ADMIN
    assert permission_of("/grpc.health.v1.Health/Check") is Permission.PUBLIC
    assert permission_of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") is (
        Permission.PUBLIC
    )
    assert Permission.ADMIN not in ROLE_PERMISSIONS[Role.UPLOADER] | ROLE_PERMISSIONS[Role.READER]
    assert Permission.UPLOAD not in ROLE_PERMISSIONS[Role.READER]


def test_an_uploader_sees_its_own_events_and_the_others_see_all() -> None:
    mine, theirs = outbox_event("e1", owner="cam"), outbox_event("e2", owner="other")
    uploader = Principal(client="cam", role=Role.UPLOADER)
    assert [uploader.may_see(mine), uploader.may_see(theirs)] == [True, False]
    for sees_all in (Principal(client="r", role=Role.READER), ANONYMOUS):
        assert sees_all.may_see(theirs)
        assert sees_all.owner_filter is None


# --- Settings ---------------------------------------------------------------------------------


def test_authentication_on_needs_a_keys_file() -> None:
    with pytest.raises(ConfigError, match="AUTH_ENABLED needs AUTH_KEYS_FILE"):
        ServerSettings.from_env({"AUTH_ENABLED": "true"})
    on = ServerSettings.from_env({"AUTH_ENABLED": "on", "AUTH_KEYS_FILE": "/k.toml"})
    assert (on.auth_enabled, on.auth_keys_file) == (True, "/k.toml")
    assert ServerSettings.from_env({}).auth_enabled is False
    with pytest.raises(ConfigError, match="UPLOAD_RATE_PER_MINUTE"):
        ServerSettings.from_env({"UPLOAD_RATE_PER_MINUTE": "-1"})


# --- The rate limit ---------------------------------------------------------------------------


async def test_the_memory_rate_limit_refuses_past_its_window_with_the_wait() -> None:
    limit = MemoryUploadRateLimit(2)
    assert [await limit.admit("cam"), await limit.admit("cam")] == [None, None]
    wait = await limit.admit("cam")
    assert wait is not None
    assert 0 < wait <= 60
    assert await limit.admit("other") is None


async def test_a_rate_limited_upload_reads_and_stores_nothing() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    pipeline = UploadPipeline(
        storage=storage,
        outbox=outbox,
        limits=LIMITS,
        admission=Admission(LIMITS, rate_limit=FakeRateLimit(allowed=1)),
    )
    data = mp4_bytes(1000)
    request = UploadRequest(filename="v.mp4", owner="cam")
    await pipeline.upload(request, chunked(data))
    read = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal read
        async for chunk in chunked(data):
            read += len(chunk)
            yield chunk

    with pytest.raises(errors.UploadRateLimited) as caught:
        await pipeline.upload(request, counted())
    assert caught.value.retry_after_s == 12.5
    assert (read, len(storage.objects), len(outbox.events)) == (0, 1, 1)
    assert pipeline.rate_limited_total == 1
    # Without an owner (authentication off) the limit does not apply.
    await pipeline.upload(UploadRequest(filename="v.mp4"), chunked(data))
    assert len(outbox.events) == 2
