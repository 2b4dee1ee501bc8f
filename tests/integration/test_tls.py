"""TLS and mTLS on the gRPC server, against the in-process server with certificates the tests
make themselves (a CA, a server certificate for 127.0.0.1 and localhost, client certificates
from that CA and from another one): TLS calls succeed, plaintext ones fail; with mTLS only a
client certificate from the configured CA gets through, through the SDK and the CLI alike."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from checkout_client import AsyncCheckoutClient, PermissionDenied, Unauthenticated, open_channel
from checkout_client.cli import EXIT_DENIED, EXIT_OK, EXIT_UNAVAILABLE
from checkout_server.auth.keys import entry, new_key
from checkout_server.config import ServerSettings
from checkout_server.errors import ConfigError
from checkout_server.wiring.server import App, create_app
from tests.helpers import mp4_bytes
from tests.integration.apps import started_app
from tests.integration.console import checkout
from tools.make_dev_certs import Issued, issue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CALL_TIMEOUT_S = 10.0


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    client: Issued  # signed by `ca`
    other_client: Issued  # signed by another CA the server does not trust


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = issue(tmp_path, "ca")
    other_ca = issue(tmp_path, "other-ca")
    server = issue(
        tmp_path,
        "server",
        issuer=ca,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
    )
    client = issue(tmp_path, "client", issuer=ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other = issue(tmp_path, "other-client", issuer=other_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(ca=ca, server=server, client=client, other_client=other)


# --- servers ------------------------------------------------------------------------------------


def tls_settings(settings: ServerSettings, pki: Pki, *, mtls: bool) -> ServerSettings:
    return settings.replace(
        tls_cert_file=str(pki.server.cert_file),
        tls_key_file=str(pki.server.key_file),
        tls_client_ca_file=str(pki.ca.cert_file) if mtls else "",
    )


@pytest.fixture
async def tls_app(
    settings: ServerSettings, pki: Pki, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[App]:
    caplog.set_level(logging.INFO, logger="checkout_server")  # for the start-up log line
    async with started_app(tls_settings(settings, pki, mtls=False)) as app:
        yield app


@pytest.fixture
async def mtls_app(
    settings: ServerSettings, pki: Pki, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[App]:
    caplog.set_level(logging.INFO, logger="checkout_server")
    async with started_app(tls_settings(settings, pki, mtls=True)) as app:
        yield app


def logged_transports(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The transports start-up logged ("plaintext", "tls" or "mtls")."""
    records = caplog.get_records("setup") + caplog.get_records("call")
    return [str(vars(r)["transport"]) for r in records if "transport" in vars(r)]


def address(app: App) -> str:
    return f"127.0.0.1:{app.port}"


async def health_check(channel: grpc.aio.Channel) -> health_pb2.HealthCheckResponse.ServingStatus:
    """grpc.health.v1 Check of the whole server, closing the channel afterwards."""
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        return response.status


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The status code of a health Check that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await health_check(channel)
    return failure.value.code()


# --- TLS ----------------------------------------------------------------------------------------


async def test_tls_call_succeeds_with_the_ca(
    tls_app: App, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    assert logged_transports(caplog) == ["tls"]
    channel = open_channel(address(tls_app), root_certificates=pki.ca.cert)
    assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    # The SDK's own Health RPC, through the same kind of channel; and by host name.
    async with AsyncCheckoutClient(
        f"localhost:{tls_app.port}", root_certificates=pki.ca.cert
    ) as client:
        health = await client.health()
    assert set(health.dependencies) == {"storage", "database"}


async def test_plaintext_call_to_the_tls_port_is_unavailable(tls_app: App) -> None:
    channel = grpc.aio.insecure_channel(address(tls_app))
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_tls_client_that_does_not_trust_the_ca_is_refused(tls_app: App) -> None:
    channel = open_channel(address(tls_app), tls=True)  # system roots: our CA is not among them
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_server_without_tls_settings_serves_and_logs_plaintext(
    settings: ServerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="checkout_server")
    async with started_app(settings) as app:
        channel = grpc.aio.insecure_channel(address(app))
        assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    assert logged_transports(caplog) == ["plaintext"]


async def test_unreadable_certificate_fails_start_up(
    settings: ServerSettings, pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    configured = settings.replace(tls_cert_file=str(missing), tls_key_file=str(pki.server.key_file))
    with pytest.raises(ConfigError, match=r"TLS_CERT_FILE: cannot read .*missing\.pem"):
        await create_app(configured)


async def test_key_of_another_certificate_fails_start_up(
    settings: ServerSettings, pki: Pki
) -> None:
    configured = settings.replace(
        tls_cert_file=str(pki.server.cert_file), tls_key_file=str(pki.client.key_file)
    )
    with pytest.raises(ConfigError, match="is TLS_KEY_FILE the key of TLS_CERT_FILE"):
        await create_app(configured)


# --- mTLS ---------------------------------------------------------------------------------------


async def test_mtls_call_with_a_client_certificate_of_the_ca_succeeds(
    mtls_app: App, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    assert logged_transports(caplog) == ["mtls"]
    channel = open_channel(
        address(mtls_app),
        root_certificates=pki.ca.cert,
        certificate_chain=pki.client.cert,
        private_key=pki.client.key,
    )
    assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    async with AsyncCheckoutClient(
        address(mtls_app),
        root_certificates=pki.ca.cert,
        certificate_chain=pki.client.cert,
        private_key=pki.client.key,
    ) as client:
        health = await client.health()
    assert set(health.dependencies) == {"storage", "database"}


async def test_mtls_call_without_a_client_certificate_fails(mtls_app: App, pki: Pki) -> None:
    channel = open_channel(address(mtls_app), root_certificates=pki.ca.cert)
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_call_with_a_certificate_of_another_ca_fails(mtls_app: App, pki: Pki) -> None:
    channel = open_channel(
        address(mtls_app),
        root_certificates=pki.ca.cert,
        certificate_chain=pki.other_client.cert,
        private_key=pki.other_client.key,
    )
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_plaintext_call_is_unavailable(mtls_app: App) -> None:
    channel = grpc.aio.insecure_channel(address(mtls_app))
    assert await refused(channel) == grpc.StatusCode.UNAVAILABLE


async def test_cli_with_cert_and_key_passes_mtls(mtls_app: App, pki: Pki) -> None:
    common = ["health", "--json", "--addr", address(mtls_app), "--ca-cert", str(pki.ca.cert_file)]
    code, stdout, stderr = await checkout(
        *common, "--cert", str(pki.client.cert_file), "--key", str(pki.client.key_file)
    )
    assert code == EXIT_OK, stderr
    assert '"storage"' in stdout
    code, _, stderr = await checkout(*common)  # no client certificate
    assert code == EXIT_UNAVAILABLE, stderr


async def test_cli_sends_the_admin_token_over_tls(
    settings: ServerSettings, pki: Pki, tmp_path: Path
) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(mp4_bytes(3000))
    configured = tls_settings(settings, pki, mtls=False).replace(admin_token="s3cret")
    async with started_app(configured) as app:
        async with AsyncCheckoutClient(address(app), root_certificates=pki.ca.cert) as sdk:
            await sdk.upload(video)
        common = ["cleanup", "--yes", "--json", "--addr", address(app)]
        ca = ["--ca-cert", str(pki.ca.cert_file)]
        code, _, stderr = await checkout(*common, *ca, "--admin-token", "wrong")
        assert code == EXIT_DENIED, stderr
        code, stdout, stderr = await checkout(*common, *ca, env={"CHECKOUT_ADMIN_TOKEN": "s3cret"})
        assert code == EXIT_OK, stderr
        assert '"deleted_events": 1' in stdout


# --- API keys over TLS (the SDK sends a token only over TLS) -------------------------------------


async def test_sdk_and_cli_authenticate_with_an_api_key_over_tls(
    settings: ServerSettings, pki: Pki, tmp_path: Path
) -> None:
    uploader, reader, admin = new_key(), new_key(), new_key()
    keys_file = tmp_path / "api-keys.toml"
    keys_file.write_text(
        "".join(
            entry(client, role, key)
            for client, role, key in [
                ("camera", "uploader", uploader),
                ("dashboard", "reader", reader),
                ("ops", "admin", admin),
            ]
        )
    )
    configured = tls_settings(settings, pki, mtls=False).replace(
        auth_enabled=True, auth_keys_file=str(keys_file)
    )
    video = tmp_path / "v.mp4"
    video.write_bytes(mp4_bytes(3000))
    async with started_app(configured) as app:
        ca = pki.ca.cert
        async with AsyncCheckoutClient(address(app), root_certificates=ca, token=uploader) as sdk:
            uploaded = await sdk.upload(video)
            assert (await sdk.status(uploaded.event_id)).status == "new"
        async with AsyncCheckoutClient(address(app), root_certificates=ca, token=reader) as sdk:
            with pytest.raises(PermissionDenied):
                await sdk.upload(video)
            assert [o.event_id async for o in sdk.list_statuses()] == [uploaded.event_id]
        async with AsyncCheckoutClient(address(app), root_certificates=ca, token=new_key()) as sdk:
            with pytest.raises(Unauthenticated):
                await sdk.status(uploaded.event_id)

        common = ["--json", "--addr", address(app), "--ca-cert", str(pki.ca.cert_file)]
        code, stdout, stderr = await checkout(
            "status", uploaded.event_id, *common, env={"CHECKOUT_TOKEN": reader}
        )
        assert code == EXIT_OK, stderr
        assert uploaded.event_id in stdout
        code, _, stderr = await checkout("status", uploaded.event_id, *common)
        assert code == EXIT_DENIED, stderr
        # The admin key in CHECKOUT_TOKEN is enough for cleanup.
        code, stdout, stderr = await checkout(
            "cleanup", "--yes", *common, env={"CHECKOUT_TOKEN": admin}
        )
        assert code == EXIT_OK, stderr
        assert '"deleted_events": 1' in stdout
