"""One client cannot stall the others through Envoy (issue 23): a real Envoy, rendered from the
template with small budgets, in front of the real server (MinIO, FerretDB).

A flood of long-lived streams of one kind (WatchStatus, or the public grpc.health.v1
Health/Watch) takes its own budget and no more: the streams beyond it are refused at once by
Envoy (gRPC UNAVAILABLE "overflow", REST 503 PROXY_OVERLOADED), while an honest unary call
and an honest upload go through within a few seconds. A request for a host name Envoy does
not serve is refused with 421 (DNS rebinding); the admin interface answers on loopback only;
the TLS listener speaks TLS 1.2 with forward-secret AEAD suites and TLS 1.3, nothing older or
weaker.

The budgets are Budgets' defaults but for the flooded kind's, which is small here (16) so
that a flood of 300 streams over 4 connections, which this 2-core machine opens in a fraction
of a second, overflows it; the defaults (512 watches, 32 public calls) work the same way, only
with more streams. With the watch budget at Envoy's old default (1024) the WatchStatus case
fails: nothing is refused.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.wiring.server import App
from devstack import Envoy, free_port
from devstack._paths import REPO_ROOT
from devstack._stack import DESCRIPTOR, OPENAPI
from tests.helpers import mp4_bytes, wait_until
from tests.integration import curl
from tests.integration.envoy_front import async_envoy_front, envoy_error
from tools.make_dev_certs import issue, subject_alt_names
from tools.render_envoy import Budgets, ListenerTls, render_envoy_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BUDGET = 16  # the flooded kind's budget in these tests
FLOOD = 300  # streams the flood opens, BUDGET held, the rest refused...
FLOOD_CONNECTIONS = 4  # ...over this many connections (each takes at most 100 streams)
HONEST_BOUND_S = 10.0  # an honest call's deadline while the flood holds its streams


@dataclass(frozen=True)
class Front:
    port: int
    admin_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def budget_front(folder: Path, server_port: int, budgets: Budgets) -> AsyncIterator[Front]:
    """Envoy with `budgets` in front of the server on `server_port`: the config make run
    renders, but for the budgets. Started and stopped off the event loop, which serves the
    in-process server meanwhile."""
    front = Front(free_port(), free_port())
    config = render_envoy_config(
        folder / "envoy.yaml",
        listen_port=front.port,
        admin_port=front.admin_port,
        upstream_port=server_port,
        descriptor=DESCRIPTOR,
        openapi=OPENAPI,
        budgets=budgets,
    )
    envoy = Envoy(
        config_path=config,
        admin_port=front.admin_port,
        cwd=REPO_ROOT,
        log_path=folder / "envoy.log",
    )
    await asyncio.to_thread(envoy.start, 60)
    try:
        yield front
    finally:
        await asyncio.to_thread(envoy.stop)


async def stat(front: Front, name: str) -> int:
    """One counter or gauge of Envoy's admin /stats."""
    reply = await curl.run(
        f"http://127.0.0.1:{front.admin_port}/stats?filter=^{re.escape(name)}$", timeout_s=10
    )
    match = re.search(rf"^{re.escape(name)}: (\d+)$", reply.text, re.MULTILINE)
    assert match is not None, reply.text
    return int(match[1])


@dataclass(frozen=True)
class Flood:
    """One kind of long-lived stream: its cluster, and how to open one over a channel (the
    call object, whose first read waits for the stream's first message or its error)."""

    name: str
    cluster: str
    open: Callable[[grpc.aio.Channel], Any]
    budget: Budgets


def _watch_status(channel: grpc.aio.Channel) -> Any:
    return pb_grpc.CheckoutServiceStub(channel).WatchStatus(pb.WatchStatusRequest())


def _health_watch(channel: grpc.aio.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())


FLOODS = [
    Flood("WatchStatus", "checkout_watches", _watch_status, Budgets(watch_requests=BUDGET)),
    Flood("Health/Watch", "checkout_public", _health_watch, Budgets(public_requests=BUDGET)),
]


async def until_closed(call: Any) -> grpc.StatusCode:
    """Read the stream to its end: its status code (a refused one ends at once; one held
    open never ends by itself)."""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def honest_upload(stub: Any) -> pb.UploadVideoResponse:
    data = mp4_bytes(256 * 1024, seed=23)

    async def messages() -> AsyncIterator[pb.UploadVideoRequest]:
        yield pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="honest.mp4"))
        yield pb.UploadVideoRequest(chunk=data)

    reply: pb.UploadVideoResponse = await stub.UploadVideo(messages(), timeout=HONEST_BOUND_S)
    return reply


@pytest.mark.parametrize("flood", FLOODS, ids=[f.name for f in FLOODS])
async def test_a_flood_of_streams_takes_its_own_budget_and_no_other(
    app: App, tmp_path: Path, flood: Flood
) -> None:
    async with (
        budget_front(tmp_path, app.port, flood.budget) as front,
        grpc.aio.insecure_channel(front.target) as honest,
    ):
        # Channels of their own (no shared subchannel): one connection each.
        own = [("grpc.use_local_subchannel_pool", 1)]
        flooding = [
            grpc.aio.insecure_channel(front.target, options=own) for _ in range(FLOOD_CONNECTIONS)
        ]
        calls = [flood.open(flooding[i % FLOOD_CONNECTIONS]) for i in range(FLOOD)]
        readers = [asyncio.create_task(until_closed(call)) for call in calls]
        try:
            # The budget's worth of streams is open and stays open; every other one was
            # refused by Envoy at once, as overflow, never reaching the server.
            await wait_until(
                lambda: sum(r.done() for r in readers) >= FLOOD - BUDGET,
                timeout_s=20,
                what="the flood's excess refused",
            )

            async def budget_held() -> bool:
                active = await stat(front, f"cluster.{flood.cluster}.upstream_rq_active")
                return active == BUDGET

            await wait_until(budget_held, timeout_s=20, what="the budget's streams open")
            refused = [r.result() for r in readers if r.done()]
            assert refused == [grpc.StatusCode.UNAVAILABLE] * (FLOOD - BUDGET), refused
            # Counted by the circuit breakers: max_requests (active_overflow), or
            # max_pending_requests while the first connection to the server was being made.
            cluster = f"cluster.{flood.cluster}"
            overflow = await stat(front, f"{cluster}.upstream_rq_active_overflow")
            overflow += await stat(front, f"{cluster}.upstream_rq_pending_overflow")
            assert overflow == FLOOD - BUDGET
            assert await stat(front, f"{cluster}.upstream_rq_total") == BUDGET  # no more sent
            one_refused = next(c for c, r in zip(calls, readers, strict=True) if r.done())
            assert "overflow" in (await one_refused.details()), await one_refused.details()

            # Meanwhile the honest client's unary call and upload go through, in time.
            stub = pb_grpc.CheckoutServiceStub(honest)
            started = time.monotonic()
            await stub.ListStatuses(pb.ListStatusesRequest(page_size=1), timeout=HONEST_BOUND_S)
            uploaded = await honest_upload(stub)
            assert uploaded.event_id
            assert time.monotonic() - started < HONEST_BOUND_S
            # REST too; and a REST client of the flooded kind gets the overflow in the one
            # JSON shape.
            status, _ = await curl.answer(f"{front.url}/api/status/all", timeout_s=HONEST_BOUND_S)
            assert status == 200
            if flood.cluster == "checkout_watches":
                status, body = await curl.answer(f"{front.url}/api/watch", timeout_s=HONEST_BOUND_S)
                assert status == 503, body
                assert envoy_error(body) == (14, "PROXY_OVERLOADED")
            assert sum(not r.done() for r in readers) == BUDGET  # still open
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for channel in flooding:
                await channel.close(None)


async def test_a_foreign_host_is_refused_with_421(app: App, tmp_path: Path) -> None:
    async with budget_front(tmp_path, app.port, Budgets()) as front:
        # The names make run serves, with any port, get through...
        for host in ("localhost", f"localhost:{front.port}", f"127.0.0.1:{front.port}"):
            status, _ = await curl.answer("-H", f"Host: {host}", f"{front.url}/api/health")
            assert status == 200, host
        served = await stat(front, "cluster.checkout_grpc.upstream_rq_total")
        # ...another (a rebinding page's own name) does not, nor reaches the server.
        status, body = await curl.answer(
            "-H", "Host: attacker.example:8080", f"{front.url}/api/health"
        )
        assert status == 421, body
        assert envoy_error(body) == (3, "UNKNOWN_HOST")
        # Native gRPC with another :authority neither.
        options = [("grpc.default_authority", "attacker.example")]
        async with grpc.aio.insecure_channel(front.target, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.CheckoutServiceStub(channel).ListStatuses(
                    pb.ListStatusesRequest(), timeout=HONEST_BOUND_S
                )
        assert refused.value.code() == grpc.StatusCode.UNKNOWN  # gRPC's mapping of 421
        assert refused.value.details() == "this host name is not served here"
        assert await stat(front, "cluster.checkout_grpc.upstream_rq_total") == served


async def test_the_admin_interface_answers_on_loopback_only(app: App, tmp_path: Path) -> None:
    # Another address of this machine: one a listener on 0.0.0.0 would take too. (Linux routes
    # all of 127.0.0.0/8 to loopback, so this needs no other interface.)
    address = "127.0.0.2"
    async with budget_front(tmp_path, app.port, Budgets()) as front:
        reply = await curl.run(f"http://127.0.0.1:{front.admin_port}/ready", timeout_s=10)
        assert reply.status == 200
        with suppress(ConnectionRefusedError):
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(address, front.admin_port), timeout=5
            )
            writer.close()
            pytest.fail(f"Envoy's admin port answered on {address}")


def client_context(ca: Path, version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    """A client that trusts `ca` and offers only TLS `version` (and, for TLS 1.2 and older,
    only `ciphers`). Security level 0 lets this OpenSSL offer TLS 1.0 and 1.1 at all: a
    refusal then comes from Envoy, not from the client."""
    context = ssl.create_default_context(cafile=ca)
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    context.set_ciphers(f"{ciphers or 'DEFAULT'}:@SECLEVEL=0")
    return context


async def handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version the listener agreed to, or the reason of the handshake's failure."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"),
            timeout=10,
        )
    except ssl.SSLError as exc:
        return str(exc.reason)
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    return str(version)


async def test_the_tls_listener_takes_tls_1_2_with_aead_suites_and_tls_1_3_only(
    tmp_path: Path,
) -> None:
    ca = issue(tmp_path, "ca")
    listener = issue(
        tmp_path, "listener", issuer=ca, san=subject_alt_names("localhost", "127.0.0.1")
    )
    tls = ListenerTls(cert=listener.cert_file, key=listener.key_file)
    async with async_envoy_front(tmp_path, [free_port()], listener_tls=tls) as front:
        v = ssl.TLSVersion
        ca_file = ca.cert_file
        assert await handshake(front.port, client_context(ca_file, v.TLSv1_3)) == "TLSv1.3"
        aead = "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert await handshake(front.port, client_context(ca_file, v.TLSv1_2, aead)) == "TLSv1.2"
        # Envoy refuses the old versions with a protocol_version alert...
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old_versions = (v.TLSv1, v.TLSv1_1)
        for old in old_versions:
            refused = await handshake(front.port, client_context(ca_file, old))
            assert refused == "TLSV1_ALERT_PROTOCOL_VERSION", (old, refused)
        # ...and TLS 1.2 with a CBC suite (Envoy's default list would take it).
        cbc = "ECDHE-ECDSA-AES128-SHA"
        refused = await handshake(front.port, client_context(ca_file, v.TLSv1_2, cbc))
        assert refused == "SSLV3_ALERT_HANDSHAKE_FAILURE", refused
