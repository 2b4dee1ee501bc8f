"""docker-compose.yml as `docker compose` loads it: the composecheck tool (tools/composecheck,
on compose-go, the loader of docker compose itself) on the repository's file and on broken
copies of it, and the loaded model: TLS and authentication on, every secret path mounted.
No Docker engine needed; one test runs the checkout healthcheck's command against the real
server serving TLS with the certificates of tools/make_dev_certs.py."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from devstack._install import COMPOSECHECK, install_composecheck
from devstack._paths import REPO_ROOT
from tools.make_dev_certs import issue, make_compose_certs, subject_alt_names

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
# What compose reads that must never have a default in the file.
SECRETS = (
    "MONGO_INITDB_ROOT_USERNAME",
    "MONGO_INITDB_ROOT_PASSWORD",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "TLS_DIR",  # not secrets, but where they are: no default either
    "API_KEYS_FILE",
)
# Where compose mounts the secrets in a container.
SECRETS_DIR = "/run/secrets/"


@pytest.fixture(scope="module")
def composecheck() -> Path:
    install_composecheck()  # a no-op once `make stack` built it (its stamp matches)
    return COMPOSECHECK


def run_check(checker: Path, compose: Path, *env_files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(checker), str(compose), *map(str, env_files)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def broken_copy(tmp_path: Path, edit: Callable[[str], str]) -> Path:
    """docker-compose.yml edited by `edit` in tmp_path, with deploy/Dockerfile beside it
    (its build context); the edit must change something."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(DOCKERFILE, tmp_path / "deploy" / "Dockerfile")
    original = COMPOSE.read_text()
    edited = edit(original)
    assert edited != original, "the edit found nothing to change"
    path = tmp_path / "docker-compose.yml"
    path.write_text(edited)
    return path


@pytest.mark.timeout(90)
def test_repository_file_loads(composecheck: Path) -> None:
    res = run_check(composecheck, COMPOSE, ENV_EXAMPLE)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout
    for service in ("mongo", "minio", "kafka", "checkout", "relay", "envoy"):
        assert service in res.stdout


@pytest.mark.timeout(30)
def test_secrets_have_no_defaults() -> None:
    text = COMPOSE.read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"(\W[^}]*)?\}", text)
        assert uses, f"{name} is not read"
        assert all(use.startswith(":?") for use in uses), f"{name}: {uses}"


@pytest.mark.timeout(30)
def test_missing_required_variable_fails(composecheck: Path, tmp_path: Path) -> None:
    env = tmp_path / "missing.env"
    env.write_text(
        "".join(
            line
            for line in ENV_EXAMPLE.read_text().splitlines(keepends=True)
            if not line.startswith("MINIO_SECRET_KEY=")
        )
    )
    res = run_check(composecheck, COMPOSE, env)
    assert res.returncode == 1
    assert "required variable MINIO_SECRET_KEY is missing a value" in res.stderr


BROKEN: list[tuple[str, Callable[[str], str], str]] = [
    (
        "unknown-key",
        lambda s: s.replace("    restart: unless-stopped", "    restart_policy: unless-stopped", 1),
        "restart_policy false schema",
    ),
    (
        "bad-condition",
        # Only the first (the relay's): compose-go names any one service it finds invalid.
        lambda s: s.replace(
            "kafka: { condition: service_healthy }", "kafka: { condition: service_ready }", 1
        ),
        "services.relay.depends_on.kafka.condition value must be one of",
    ),
    (
        "undefined-dependency",
        # Only the first (the relay's; the runner depends on Kafka too).
        lambda s: s.replace(
            "kafka: { condition: service_healthy }", "kafkaa: { condition: service_healthy }", 1
        ),
        'service "relay" depends on undefined service "kafkaa"',
    ),
    (
        "healthy-without-healthcheck",  # envoy has none
        lambda s: s.replace(  # (and checkout no longer waits for the relay: no cycle)
            "      relay: { condition: service_started }\n", ""
        ).replace(
            "kafka: { condition: service_healthy }",
            "kafka: { condition: service_healthy }\n      envoy: { condition: service_healthy }",
        ),
        "service relay depends on envoy being healthy, but envoy has no healthcheck",
    ),
    (
        "undocumented-variable",
        lambda s: s.replace("METRICS_ADDR: 0.0.0.0:9463", "METRICS_ADDR: ${METRICS_ADDR}"),
        "variable METRICS_ADDR is read here but not defined in",
    ),
    (
        "bad-build-target",
        lambda s: s.replace("target: envoy }", "target: envoy-proxy }"),
        'build target "envoy-proxy" is not a stage',
    ),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("edit", "message"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_copy_fails(
    composecheck: Path, tmp_path: Path, edit: Callable[[str], str], message: str
) -> None:
    res = run_check(composecheck, broken_copy(tmp_path, edit), ENV_EXAMPLE)
    assert res.returncode == 1, res.stdout
    assert message in res.stderr


@pytest.mark.timeout(30)
def test_stale_env_variable_fails(composecheck: Path, tmp_path: Path) -> None:
    env = tmp_path / "stale.env"
    env.write_text(ENV_EXAMPLE.read_text() + "NOT_READ_BY_COMPOSE=1\n")
    res = run_check(composecheck, COMPOSE, env)
    assert res.returncode == 1
    assert "variable NOT_READ_BY_COMPOSE is defined in" in res.stderr


# --- the loaded model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(composecheck: Path) -> dict[str, Any]:
    """The project as docker compose loads it with .env.example (`config --format json`)."""
    res = subprocess.run(
        [str(composecheck), "-json", str(COMPOSE), str(ENV_EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    loaded: dict[str, Any] = json.loads(res.stdout)
    return loaded


def mounted(model: dict[str, Any], service: str) -> dict[str, str]:
    """The secrets `service` mounts: container path -> host file."""
    files = {name: secret["file"] for name, secret in model["secrets"].items()}
    return {s["target"]: files[s["source"]] for s in model["services"][service]["secrets"]}


@pytest.mark.timeout(30)
def test_checkout_serves_tls_and_requires_api_keys(model: dict[str, Any]) -> None:
    env = model["services"]["checkout"]["environment"]
    secrets = mounted(model, "checkout")
    tls_dir = REPO_ROOT / "secrets" / "tls"  # TLS_DIR of .env.example
    assert secrets[env["TLS_CERT_FILE"]] == str(tls_dir / "server.pem")
    assert secrets[env["TLS_KEY_FILE"]] == str(tls_dir / "server.key")
    assert "TLS_CLIENT_CA_FILE" not in env  # TLS, not mTLS: see the comment in the file
    assert env["AUTH_ENABLED"] == "true"
    assert "ADMIN_TOKEN" not in env  # with authentication on an admin key calls Cleanup
    assert secrets[env["AUTH_KEYS_FILE"]] == str(REPO_ROOT / "secrets" / "api-keys.toml")
    # Every file the server is given is mounted.
    for name, value in env.items():
        if name.endswith("_FILE"):
            assert value in secrets, name
    check = " ".join(model["services"]["checkout"]["healthcheck"]["test"])
    assert "ssl_channel_credentials" in check
    assert "insecure_channel" not in check


@pytest.mark.timeout(30)
def test_envoy_serves_https_with_the_files_its_image_reads(model: dict[str, Any]) -> None:
    envoy = model["services"]["envoy"]
    assert [(p["target"], p["published"]) for p in envoy["ports"]] == [(8443, "8443")]
    secrets = mounted(model, "envoy")
    tls_dir = REPO_ROOT / "secrets" / "tls"
    # The paths the Envoy config in the image reads (deploy/Dockerfile renders it).
    render = DOCKERFILE.read_text().partition("tools/render_envoy.py")[2].partition("&& pip")[0]
    options = dict(re.findall(r"--([a-z-]+) (\S+)", render))
    assert options["listen-port"] == "8443"
    assert secrets[options["listen-tls-cert"]] == str(tls_dir / "envoy.pem")
    assert secrets[options["listen-tls-key"]] == str(tls_dir / "envoy.key")
    assert secrets[options["upstream-tls-ca"]] == str(tls_dir / "ca.pem")
    assert options["upstream-host"] == "checkout"  # also the name checked in the certificate
    assert "--upstream-sni" not in render


# --- the checkout healthcheck against a real TLS server -----------------------------------------


@asynccontextmanager
async def tls_server(settings: ServerSettings, cert: Path, key: Path) -> AsyncIterator[App]:
    app = await create_app(settings.replace(tls_cert_file=str(cert), tls_key_file=str(key)))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=1.0)


async def run_healthcheck(model: dict[str, Any], port: int, ca: Path) -> tuple[int, str]:
    """The checkout service's healthcheck command, with this test's CA and port: its exit
    code and stderr. The venv has the image's grpcio and grpcio-health-checking."""
    command = model["services"]["checkout"]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    code = command[3]
    assert f"{SECRETS_DIR}tls_ca" in code
    assert "127.0.0.1:50051" in code
    code = code.replace(f"{SECRETS_DIR}tls_ca", str(ca)).replace("50051", str(port))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    return await process.wait(), stderr.decode()


@pytest.mark.timeout(60)
async def test_checkout_healthcheck_passes_with_the_dev_certificates(
    model: dict[str, Any], settings: ServerSettings, tmp_path: Path
) -> None:
    make_compose_certs(tmp_path)
    async with tls_server(settings, tmp_path / "server.pem", tmp_path / "server.key") as app:
        code, stderr = await run_healthcheck(model, app.port, tmp_path / "ca.pem")
    assert code == 0, stderr


@pytest.mark.timeout(60)
async def test_checkout_healthcheck_fails_for_a_certificate_without_the_service_name(
    model: dict[str, Any], settings: ServerSettings, tmp_path: Path
) -> None:
    ca = issue(tmp_path, "ca")
    # Signed by the CA the healthcheck trusts, but naming localhost only, not "checkout".
    server = issue(tmp_path, "server", issuer=ca, san=subject_alt_names("localhost", "127.0.0.1"))
    async with tls_server(settings, server.cert_file, server.key_file) as app:
        code, stderr = await run_healthcheck(model, app.port, ca.cert_file)
    assert code != 0
    assert "StatusCode.UNAVAILABLE" in stderr


def test_the_server_wakes_the_relays_it_waits_for(model: dict[str, Any]) -> None:
    checkout, relay = model["services"]["checkout"], model["services"]["relay"]
    host, _, port = checkout["environment"]["RELAY_WAKE_TARGETS"].partition(":")
    assert host == "relay"
    # The relays listen for wake-ups on their health address's port (RELAY_WAKE_ADDR unset).
    assert "RELAY_WAKE_ADDR" not in relay["environment"]
    assert relay["environment"]["RELAY_HEALTH_ADDR"].endswith(f":{port}")
    # The name is resolved once, at the server's start: the relays must exist by then.
    assert checkout["depends_on"]["relay"]["condition"] == "service_started"


def test_the_relays_wake_the_servers_watchers(model: dict[str, Any]) -> None:
    checkout, relay = model["services"]["checkout"], model["services"]["relay"]
    host, _, port = relay["environment"]["WATCH_WAKE_TARGETS"].partition(":")
    assert host == "checkout"
    # The server listens for them on its gRPC address's port (WATCH_WAKE_ADDR unset).
    assert "WATCH_WAKE_ADDR" not in checkout["environment"]
    assert checkout["environment"].get("GRPC_ADDR", "0.0.0.0:50051").endswith(f":{port}")
