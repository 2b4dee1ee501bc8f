"""API keys, the permission table, bearer parsing, the rate limit and its place in the
upload pipeline, without servers (the real server's behaviour: integration/test_auth.py)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_server import errors
from checkout_server.adapters.rate_limits import (
    MIN_RETRY_AFTER_S,
    MemoryCallBudget,
    MemoryUploadRateLimit,
)
from checkout_server.api import auth as auth_module
from checkout_server.api.auth import (
    METHOD_PERMISSIONS,
    ROLE_PERMISSIONS,
    AuthInterceptor,
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
from tests.helpers import mp4_bytes, outbox_event, wait_until
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


def rewrite(path: Path, text: str) -> None:
    """Change the file so that its stamp changes even on a coarse clock."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


async def test_the_ring_reloads_a_changed_file_and_tells_its_subscribers(
    tmp_path: Path,
) -> None:
    key, later = new_key(), new_key()
    path = tmp_path / "keys.toml"
    path.write_text(entry("cam", "uploader", hash_key(key)))
    ring = KeyRing(path, reload_interval_s=0.5)
    changes: list[int] = []
    ring.subscribe(lambda: changes.append(len(ring)))
    assert await ring.round() == 0.5
    assert (ring.reloads_total, changes) == (0, [])  # unchanged: not read again

    rewrite(path, entry("cam", "uploader", hash_key(later)))
    await ring.round()
    assert (ring.authenticate(key), ring.reloads_total) == (None, 1)
    assert ring.authenticate(later) is not None
    assert changes == [1]
    rewrite(path, entry("cam", "uploader", hash_key(later)) + "# the same keys\n")
    await ring.round()
    assert (ring.reloads_total, changes) == (2, [1])  # read again, nothing to tell


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda path: rewrite(path, ""), "empty"),
        (lambda path: rewrite(path, "# every key removed\n"), "empty"),
        (lambda path: rewrite(path, "not toml ["), "invalid"),
        (lambda path: rewrite(path, entry(role="owner")), "invalid"),
        (lambda path: rewrite(path, "keys = 1\n"), "invalid"),
        (lambda path: path.write_bytes(b"\xff\xfe not utf-8"), "unreadable"),
        (Path.unlink, "missing"),
    ],
)
async def test_a_refused_keys_file_means_no_keys_until_it_is_valid_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: Any, reason: str
) -> None:
    key = new_key()
    path = tmp_path / "keys.toml"
    path.write_text(entry("cam", "uploader", hash_key(key)))
    ring = KeyRing(path, reload_interval_s=0.5)
    changes: list[int] = []
    ring.subscribe(lambda: changes.append(len(ring)))

    spoil(path)
    await ring.round()
    assert ring.authenticate(key) is None  # fails closed: no key at all
    assert (len(ring), ring.refused, changes) == (0, True, [0])
    assert ring.reload_errors == {reason: 1}
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 1
    assert "no key is accepted" in refusals[0].getMessage()
    assert key not in caplog.text
    assert hash_key(key) not in caplog.text

    for _ in range(3):  # the same refusal: logged and counted once, not every round
        await ring.round()
    assert ring.reload_errors == {reason: 1}
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert changes == [0]

    rewrite(path, entry("cam", "reader", hash_key(key)))
    await ring.round()
    assert ring.authenticate(key) == Principal(client="cam", role=Role.READER)
    assert (ring.refused, changes, ring.reload_errors_total) == (False, [0, 1], 1)


async def test_each_new_refusal_is_logged_and_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(entry())
    ring = KeyRing(path, reload_interval_s=0.5)
    rewrite(path, "")
    await ring.round()
    rewrite(path, "not toml [")
    await ring.round()
    path.unlink()
    await ring.round()
    await ring.round()
    assert ring.reload_errors == {"empty": 1, "invalid": 1, "missing": 1}
    assert ring.reloads_total == 0


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


# --- Revoked keys end their open streams ---------------------------------------------------

CAM = Principal(client="cam", role=Role.UPLOADER)
UPLOAD = "/checkout.v1.CheckoutService/UploadVideo"
WATCH = "/checkout.v1.CheckoutService/WatchStatus"
LIST = "/checkout.v1.CheckoutService/ListStatuses"


class Ring:
    """Keys the test changes, by token."""

    def __init__(self, **keys: Principal) -> None:
        self.keys = keys

    def authenticate(self, token: str) -> Principal | None:
        return self.keys.get(token)


@dataclass(frozen=True)
class Call:
    """A call's context: its bearer key."""

    key: str

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_revoked_keys_upload_ends_api_key_revoked_after_its_cleanup() -> None:
    ring = Ring(old=CAM, new=CAM)  # one client, two keys: one is revoked
    auth = AuthInterceptor(ring)
    cleaned: list[str] = []

    async def upload(request: Any, context: Call) -> None:
        try:
            await forever()  # waiting for the client's next chunk
        finally:
            cleaned.append(context.key)  # what the pipeline removes on any failure

    handler = auth.wrap(UPLOAD, grpc.stream_unary_rpc_method_handler(upload))
    behavior = cast(Callable[[Any, Call], Coroutine[Any, Any, Any]], handler.stream_unary)
    revoked = asyncio.create_task(behavior(None, Call("old")))
    honest = asyncio.create_task(behavior(None, Call("new")))
    await wait_until(lambda: auth.open_streams == 2, what="both uploads admitted")
    auth.keys_changed()  # the same keys: nothing ends
    assert auth.revoked_streams_total == 0

    del ring.keys["old"]
    auth.keys_changed()
    with pytest.raises(errors.ApiKeyRevoked) as caught:
        await asyncio.wait_for(revoked, 5)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert cleaned == ["old"]
    assert (honest.done(), auth.open_streams, auth.revoked_streams_total) == (False, 1, 1)
    auth.keys_changed()  # told again: the stream that ended is not counted twice
    assert auth.revoked_streams_total == 1
    honest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await honest
    assert auth.open_streams == 0


@pytest.mark.parametrize(
    "now",
    [
        None,  # removed
        Principal(client="cam", role=Role.READER),  # a role that may not upload
        Principal(client="other", role=Role.UPLOADER),  # another client's now
    ],
)
async def test_a_stream_ends_when_its_key_no_longer_admits_it_as_before(
    now: Principal | None,
) -> None:
    ring = Ring(key=CAM)
    auth = AuthInterceptor(ring)

    async def upload(request: Any, context: Call) -> None:
        await forever()

    handler = auth.wrap(UPLOAD, grpc.stream_unary_rpc_method_handler(upload))
    behavior = cast(Callable[[Any, Call], Coroutine[Any, Any, Any]], handler.stream_unary)
    call = asyncio.create_task(behavior(None, Call("key")))
    await wait_until(lambda: auth.open_streams == 1, what="the upload admitted")
    if now is None:
        del ring.keys["key"]
    else:
        ring.keys["key"] = now
    auth.keys_changed()
    with pytest.raises(errors.ApiKeyRevoked):
        await asyncio.wait_for(call, 5)


async def test_a_watch_waiting_for_changes_ends_api_key_revoked() -> None:
    ring = Ring(key=CAM)
    auth = AuthInterceptor(ring)
    closed = asyncio.Event()

    async def watch(request: Any, context: Call) -> AsyncIterator[int]:
        try:
            yield 1
            await forever()  # the watch feed: nothing changes
            yield 2
        finally:
            closed.set()  # unsubscribed

    handler = auth.wrap(WATCH, grpc.unary_stream_rpc_method_handler(watch))
    stream = cast(Callable[[Any, Call], AsyncIterator[int]], handler.unary_stream)

    async def read_all() -> list[int]:
        return [n async for n in stream(None, Call("key"))]

    reader = asyncio.create_task(read_all())
    await wait_until(lambda: auth.open_streams == 1, what="the watch admitted")
    ring.keys.clear()
    auth.keys_changed()
    with pytest.raises(errors.ApiKeyRevoked):
        await asyncio.wait_for(reader, 5)
    assert closed.is_set()
    assert auth.open_streams == 0


async def test_a_watch_revoked_while_its_response_is_sent_ends_at_its_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_module, "REVOKED_SEND_GRACE_S", 0.05)
    ring = Ring(key=CAM, slow=CAM)
    auth = AuthInterceptor(ring)
    steps: list[int] = []

    async def watch(request: Any, context: Call) -> AsyncIterator[int]:
        for n in range(10):
            steps.append(n)
            yield n

    handler = auth.wrap(WATCH, grpc.unary_stream_rpc_method_handler(watch))
    stream = cast(Callable[[Any, Call], AsyncGenerator[int, None]], handler.unary_stream)
    sent, go = asyncio.Event(), asyncio.Event()

    async def grpc_sends(key: str, *, then: Callable[[], Awaitable[object]]) -> None:
        """What gRPC does: take a response, send it (here: wait), ask for the next."""
        responses = stream(None, Call(key))
        await anext(responses)
        sent.set()
        await then()
        await anext(responses)

    # Revoked while gRPC sends: its next step ends it, no cancellation needed.
    sender = asyncio.create_task(grpc_sends("key", then=go.wait))
    await sent.wait()
    del ring.keys["key"]
    auth.keys_changed()
    go.set()
    with pytest.raises(errors.ApiKeyRevoked):
        await asyncio.wait_for(sender, 5)
    assert steps == [0]  # the handler made no step after the revocation
    # A send that never completes (a client that stopped reading): cancelled after the grace.
    sent.clear()
    steps.clear()
    stuck = asyncio.create_task(grpc_sends("slow", then=forever))
    await sent.wait()
    del ring.keys["slow"]
    auth.keys_changed()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stuck, 5)
    assert steps == [0]


async def test_a_revoked_stream_also_cancelled_by_its_client_stays_cancelled() -> None:
    ring = Ring(key=CAM)
    auth = AuthInterceptor(ring)

    async def upload(request: Any, context: Call) -> None:
        await forever()

    handler = auth.wrap(UPLOAD, grpc.stream_unary_rpc_method_handler(upload))
    behavior = cast(Callable[[Any, Call], Coroutine[Any, Any, Any]], handler.stream_unary)
    call = asyncio.create_task(behavior(None, Call("key")))
    await wait_until(lambda: auth.open_streams == 1, what="the upload admitted")
    ring.keys.clear()
    auth.keys_changed()
    call.cancel()  # its client went away at the same moment
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_unary_calls_are_not_followed() -> None:
    ring = Ring(key=CAM)
    auth = AuthInterceptor(ring)
    running = asyncio.Event()

    async def listing(request: Any, context: Call) -> str:
        running.set()
        await asyncio.sleep(0)
        return "listed"

    handler = auth.wrap(LIST, grpc.unary_unary_rpc_method_handler(listing))
    behavior = cast(Callable[[Any, Call], Coroutine[Any, Any, str]], handler.unary_unary)
    call = asyncio.create_task(behavior(None, Call("key")))
    await running.wait()
    assert auth.open_streams == 0
    assert await call == "listed"


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
    for rate in ("REQUEST_RATE_PER_MINUTE", "LIST_RATE_PER_MINUTE", "RESULT_CHECK_RATE_PER_S"):
        with pytest.raises(ConfigError, match=rate):
            ServerSettings.from_env({rate: "-1"})
    assert ServerSettings.from_env({"RESULT_CHECK_RATE_PER_S": "0"}).result_check_rate_per_s == 0


# --- The rate limit ---------------------------------------------------------------------------


async def test_the_memory_rate_limit_refuses_past_its_window_with_the_wait() -> None:
    now = [1000.0]
    limit = MemoryUploadRateLimit(2, clock=lambda: now[0])
    assert [await limit.admit("cam"), await limit.admit("cam")] == [None, None]
    now[0] = 1010.0
    assert await limit.admit("cam") == 50.0  # until its first call leaves the window
    assert await limit.admit("other") is None
    now[0] = 1060.0  # the first two left it together
    assert [await limit.admit("cam") for _ in range(3)] == [None, None, 60.0]
    now[0] = 1119.99
    assert await limit.admit("cam") == MIN_RETRY_AFTER_S  # never less


async def test_the_memory_rate_limit_keeps_only_the_clients_of_the_last_minute() -> None:
    # An admit costs the same however many clients came before: the clients whose last call
    # left the window are dropped, oldest first, rather than walked at every call.
    now = [0.0]
    limit = MemoryUploadRateLimit(1, clock=lambda: now[0])
    for n in range(1000):
        now[0] = n * 0.06  # a thousand clients within a minute
        await limit.admit(f"peer {n}")
    assert len(limit) == 1000
    now[0] = 89.97  # the first half of them have left
    assert await limit.admit("peer 999") is not None  # its call is still in the window
    assert len(limit) == 500
    now[0] = 200.0
    assert await limit.admit("late") is None
    assert len(limit) == 1


async def test_a_call_budget_is_per_client_and_per_second() -> None:
    now = [100.0]
    budget = MemoryCallBudget(2, clock=lambda: now[0])
    assert [await budget.take("cam") for _ in range(3)] == [True, True, False]
    assert await budget.take("other") is True
    now[0] = 100.99  # cam's window has not ended
    assert await budget.take("cam") is False
    now[0] = 101.0  # it has: a new one, with the whole budget
    assert [await budget.take("cam") for _ in range(3)] == [True, True, False]


async def test_a_call_budget_keeps_only_the_clients_of_the_last_second() -> None:
    # A take costs the same however many clients came before: the ended windows are dropped,
    # oldest first, rather than walked at every take.
    now = [0.0]
    budget = MemoryCallBudget(1, clock=lambda: now[0])
    for n in range(1000):
        now[0] = n / 1000  # a thousand clients within a second
        await budget.take(f"peer {n}")
    assert len(budget) == 1000
    now[0] = 1.4995  # the first half of them have ended
    assert await budget.take("peer 999") is False  # its window is still on
    assert len(budget) == 500
    now[0] = 2.0
    assert await budget.take("late") is True
    assert len(budget) == 1


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
