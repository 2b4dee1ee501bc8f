"""docker-compose.yml as `docker compose` loads it: the composecheck tool (tools/composecheck,
on compose-go, the loader of docker compose itself) on the repository's file and on broken
copies of it, and the loaded model: TLS and authentication on, every secret path mounted.
No Docker engine needed; one test runs the checkout healthcheck's command against the real
server serving TLS with the certificates of tools/make_dev_certs.py."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from checkout_common.settings import EnvRule, EnvSettings
from checkout_runner.config import RunnerSettings
from checkout_server.config import RelaySettings, ServerSettings
from checkout_server.wiring.server import App
from devstack._install import COMPOSECHECK, install_composecheck
from devstack._paths import REPO_ROOT
from tests.integration.apps import started_app
from tests.integration.compose_model import COMPOSE, ENV_EXAMPLE, load_model
from tools.make_compose_secrets import FILES as CREDENTIAL_FILES
from tools.make_compose_secrets import make_compose_secrets
from tools.make_dev_certs import issue, make_compose_certs, subject_alt_names

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
# What compose reads that must never have a default in the file.
SECRETS = (
    "MONGO_INITDB_ROOT_USERNAME",
    "MINIO_ROOT_USER",
    "TLS_DIR",  # not secrets, but where they are: no default either
    "API_KEYS_FILE",
    "CREDENTIALS_DIR",
)
# Where compose mounts the secrets in a container.
SECRETS_DIR = "/run/secrets/"
# The healthcheck's secrets (their names under SECRETS_DIR) and the files of TLS_DIR they are.
MOUNTED_CERTS = {
    "tls_ca": "ca.pem",
    "client_tls_cert": "client.pem",
    "client_tls_key": "client.key",
}


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
    for service in (
        "mongo",
        "minio",
        "minio-init",
        "kafka",
        "checkout",
        "relay",
        "runner",
        "envoy",
    ):
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
            if not line.startswith("CREDENTIALS_DIR=")
        )
    )
    res = run_check(composecheck, COMPOSE, env)
    assert res.returncode == 1
    assert "required variable CREDENTIALS_DIR is missing a value" in res.stderr


BROKEN: list[tuple[str, Callable[[str], str], str]] = [
    (
        "unknown-key",
        lambda s: s.replace("    restart: unless-stopped", "    restart_policy: unless-stopped", 1),
        "restart_policy false schema",
    ),
    (
        "bad-condition",
        # Only the first (kafka-acls'): compose-go names any one service it finds invalid.
        lambda s: s.replace(
            "kafka: { condition: service_healthy }", "kafka: { condition: service_ready }", 1
        ),
        "services.kafka-acls.depends_on.kafka.condition value must be one of",
    ),
    (
        "undefined-dependency",
        # Only the first (kafka-acls'; the relay and the runner depend on Kafka too).
        lambda s: s.replace(
            "kafka: { condition: service_healthy }", "kafkaa: { condition: service_healthy }", 1
        ),
        'service "kafka-acls" depends on undefined service "kafkaa"',
    ),
    (
        "healthy-without-healthcheck",  # envoy has none
        lambda s: s.replace(  # (and checkout no longer waits for the relay: no cycle)
            "      relay: { condition: service_started }\n", ""
        ).replace(  # the relay's dependencies: the last is followed by this comment
            "\n    # Two replicas cannot share a host port",
            "\n      envoy: { condition: service_healthy }"
            "\n    # Two replicas cannot share a host port",
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
def model() -> dict[str, Any]:
    """The project as docker compose loads it with .env.example (compose_model.py)."""
    return load_model()


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
    assert secrets[env["TLS_CLIENT_CA_FILE"]] == str(tls_dir / "ca.pem")  # mTLS
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
    # mTLS: Envoy shows the callers' client certificate (the server requires one).
    assert secrets[options["upstream-tls-cert"]] == str(tls_dir / "client.pem")
    assert secrets[options["upstream-tls-key"]] == str(tls_dir / "client.key")
    assert options["upstream-host"] == "checkout"  # also the name checked in the certificate
    assert "--upstream-sni" not in render


# --- the checkout healthcheck against a real TLS server -----------------------------------------


@asynccontextmanager
async def tls_server(
    settings: ServerSettings, cert: Path, key: Path, client_ca: Path
) -> AsyncIterator[App]:
    """A server with mTLS, as compose runs it."""
    async with started_app(
        settings, tls_cert_file=str(cert), tls_key_file=str(key), tls_client_ca_file=str(client_ca)
    ) as app:
        yield app


async def run_healthcheck(model: dict[str, Any], port: int, certs: Path) -> tuple[int, str]:
    """The checkout service's healthcheck command, with this test's port and the CA and
    client certificate of `certs` (make_compose_certs's names) mounted as compose mounts
    them: its exit code and stderr. The venv has the image's grpcio and
    grpcio-health-checking."""
    command = model["services"]["checkout"]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    code = command[3]
    assert SECRETS_DIR in code
    assert "127.0.0.1:50051" in code
    mounted = certs / "mounted"
    mounted.mkdir()
    for secret, name in MOUNTED_CERTS.items():
        (mounted / secret).write_bytes((certs / name).read_bytes())
    code = code.replace(SECRETS_DIR, f"{mounted}/").replace("50051", str(port))
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
    async with tls_server(
        settings, tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    ) as app:
        code, stderr = await run_healthcheck(model, app.port, tmp_path)
    assert code == 0, stderr


@pytest.mark.timeout(60)
async def test_checkout_healthcheck_fails_for_a_certificate_without_the_service_name(
    model: dict[str, Any], settings: ServerSettings, tmp_path: Path
) -> None:
    ca = issue(tmp_path, "ca")
    issue(tmp_path, "client", issuer=ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    # Signed by the CA the healthcheck trusts, but naming localhost only, not "checkout".
    server = issue(tmp_path, "server", issuer=ca, san=subject_alt_names("localhost", "127.0.0.1"))
    async with tls_server(settings, server.cert_file, server.key_file, ca.cert_file) as app:
        code, stderr = await run_healthcheck(model, app.port, tmp_path)
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


# --- credentials: a user per service, every secret from a file ----------------------------------

CREDENTIALS_DIR = REPO_ROOT / "secrets" / "credentials"  # CREDENTIALS_DIR of .env.example
MINIO_POLICIES = REPO_ROOT / "deploy" / "minio"
MONGO_USERS_SCRIPT = REPO_ROOT / "deploy" / "mongo" / "users.js"
# The processes of checkout in compose, with the settings each reads.
PROCESSES: dict[str, type[EnvSettings]] = {
    "checkout": ServerSettings,
    "relay": RelaySettings,
    "runner": RunnerSettings,
}


def holders(model: dict[str, Any], *, variable: str = "", secret: str = "") -> set[str]:
    """The services given `variable` in their environment, or mounting `secret`."""
    return {
        name
        for name, service in model["services"].items()
        if (variable and variable in (service.get("environment") or {}))
        or (secret and secret in {s["source"] for s in service.get("secrets", [])})
    }


def test_only_minio_and_its_init_job_have_the_minio_root_user(model: dict[str, Any]) -> None:
    assert holders(model, secret="minio_root_password") == {"minio", "minio-init"}
    assert holders(model, variable="MINIO_ROOT_USER") == {"minio", "minio-init"}
    for name in ("minio", "minio-init"):
        env = model["services"][name]["environment"]
        assert "MINIO_ROOT_PASSWORD" not in env  # from the file only
        assert mounted(model, name)[env["MINIO_ROOT_PASSWORD_FILE"]] == str(
            CREDENTIALS_DIR / "minio-root-password"
        )


def test_only_mongo_has_the_mongo_root_user(model: dict[str, Any]) -> None:
    assert holders(model, secret="mongo_root_password") == {"mongo"}
    assert holders(model, variable="MONGO_INITDB_ROOT_USERNAME") == {"mongo"}
    env = model["services"]["mongo"]["environment"]
    assert "MONGO_INITDB_ROOT_PASSWORD" not in env
    assert mounted(model, "mongo")[env["MONGO_INITDB_ROOT_PASSWORD_FILE"]] == str(
        CREDENTIALS_DIR / "mongo-root-password"
    )


def test_the_relay_has_no_object_storage(model: dict[str, Any]) -> None:
    relay = model["services"]["relay"]
    assert [name for name in relay["environment"] if name.startswith("MINIO_")] == []
    assert [s["source"] for s in relay["secrets"] if s["source"].startswith("minio")] == []
    assert not {"minio", "minio-init"} & set(relay["depends_on"])


@pytest.mark.parametrize(("service", "user"), [("checkout", "server"), ("runner", "runner")])
def test_the_server_and_runners_use_the_minio_users_the_init_job_makes(
    model: dict[str, Any], service: str, user: str
) -> None:
    env = model["services"][service]["environment"]
    init = model["services"]["minio-init"]
    # deploy/minio/init.sh: user checkout-<user> with policy deploy/minio/checkout-<user>.json
    # and the secret key of <USER>_SECRET_KEY_FILE.
    assert env["MINIO_ACCESS_KEY"] == f"checkout-{user}"
    assert (MINIO_POLICIES / f"checkout-{user}.json").is_file()
    assert f"user checkout-{user} " in (MINIO_POLICIES / "init.sh").read_text()
    key_file = init["environment"][f"{user.upper()}_SECRET_KEY_FILE"]
    assert (
        mounted(model, service)[env["MINIO_SECRET_KEY_FILE"]]
        == mounted(model, "minio-init")[key_file]
    )
    # It starts once the users exist; the job once MinIO answers.
    assert model["services"][service]["depends_on"]["minio-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    # The job runs the script of the repository, with its policies beside it.
    assert init["entrypoint"] == ["/bin/sh", "/deploy/minio/init.sh"]
    assert [(v["source"], v["target"]) for v in init["volumes"]] == [
        (str(MINIO_POLICIES), "/deploy/minio")
    ]
    assert init["environment"]["BUCKETS"].split() == ["videos"]  # what the policies name


def test_every_credential_file_is_made_by_the_tool(model: dict[str, Any]) -> None:
    named = {
        Path(secret["file"]).name
        for secret in model["secrets"].values()
        if Path(secret["file"]).parent == CREDENTIALS_DIR
    }
    assert named == set(CREDENTIAL_FILES)


def test_mongo_makes_each_services_user_from_the_uri_it_connects_with(
    model: dict[str, Any],
) -> None:
    mongo = model["services"]["mongo"]
    assert [(v["source"], v["target"]) for v in mongo["volumes"] if v["type"] == "bind"] == [
        (str(MONGO_USERS_SCRIPT.parent), "/docker-entrypoint-initdb.d")
    ]
    read_by_script = set(re.findall(r"(mongo_uri_\w+):", MONGO_USERS_SCRIPT.read_text()))
    mongo_files = mounted(model, "mongo")
    uris = set()
    for service in PROCESSES:
        env = model["services"][service]["environment"]
        assert "MONGO_URI" not in env
        host_file = mounted(model, service)[env["MONGO_URI_FILE"]]
        uris.add(host_file)
        # The mongo container mounts the same file under the name the script reads.
        inside = next(path for path, file in mongo_files.items() if file == host_file)
        assert inside.removeprefix(SECRETS_DIR) in read_by_script
    assert len(uris) == len(PROCESSES)  # a user each


@pytest.mark.parametrize("service", list(PROCESSES))
def test_each_process_reads_its_credentials_from_its_files(
    model: dict[str, Any], service: str, tmp_path: Path
) -> None:
    """The service's environment from the model, every /run/secrets/ path pointed at the file
    tools/make_compose_secrets.py wrote: its settings hold the files' values, and no secret
    setting of the process is in the environment itself."""
    make_compose_secrets(tmp_path)
    settings_class = PROCESSES[service]
    secret_names = {
        name.upper()
        for name, field in settings_class.model_fields.items()
        if EnvRule.SECRET in field.metadata
    }
    env = model["services"][service]["environment"]
    # MINIO_ACCESS_KEY may come from a file too, but here it is the MinIO user's name.
    assert not (secret_names - {"MINIO_ACCESS_KEY"}) & set(env)
    files = mounted(model, service)
    credentials = {
        name: str(tmp_path / Path(files[value]).name)
        for name, value in env.items()
        if value in files and Path(files[value]).parent == CREDENTIALS_DIR
    }
    assert {name.removesuffix("_FILE") for name in credentials} <= secret_names
    settings = settings_class.from_env(
        {**{k: v for k, v in env.items() if k.startswith(("MINIO_", "KAFKA_"))}, **credentials}
    )
    values = dict(settings)
    for name, path in credentials.items():
        assert values[name.removesuffix("_FILE").lower()] == Path(path).read_text().strip()
    if service == "relay":
        assert set(credentials) == {
            "MONGO_URI_FILE",
            "WAKE_SECRET_FILE",
            "KAFKA_SASL_PASSWORD_FILE",
        }
    else:
        assert {"MONGO_URI_FILE", "MINIO_SECRET_KEY_FILE"} <= set(credentials)
    if service in ("relay", "runner"):  # each logs in to Kafka as itself
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert env["KAFKA_SASL_USERNAME"] == service
        assert "KAFKA_SASL_PASSWORD_FILE" in credentials


def test_the_mongo_users_roles_name_the_collections_each_process_uses(
    model: dict[str, Any],
) -> None:
    """deploy/mongo/users.js names the database and collections: compose sets none of them, so
    they are the processes' defaults, and each role covers what its process opens."""
    script = MONGO_USERS_SCRIPT.read_text()
    roles = {
        secret: set(re.findall(r'"(\w+)"', names))
        for secret, names in re.findall(r"(mongo_uri_\w+): \[([^\]]*)\]", script)
    }
    server, relay, runner = ServerSettings(), RelaySettings(), RunnerSettings()
    outbox = relay.mongo_outbox_collection  # the relay's leases and members are named after it
    # The hours of the status records are named after them (adapters/mongo_status_hours.py).
    assert roles == {
        "mongo_uri_checkout": {
            server.mongo_outbox_collection,
            server.mongo_status_collection,
            f"{server.mongo_status_collection}_hours",
            server.mongo_upload_sessions_collection,
            server.mongo_upload_facts_collection,
        },
        "mongo_uri_relay": {
            outbox,
            relay.mongo_status_collection,
            f"{relay.mongo_status_collection}_hours",
            f"{outbox}_relay_leases",
            f"{outbox}_relay_members",
        },
        "mongo_uri_runner": {runner.runner_state_collection},
    }
    databases = {server.mongo_db, relay.mongo_db, runner.mongo_db}
    assert re.findall(r'const database = "(\w+)"', script) == list(databases)
    for service in PROCESSES:
        env = model["services"][service]["environment"]
        assert [n for n in env if n == "MONGO_DB" or n.endswith("_COLLECTION")] == [], service


def test_kafka_takes_only_its_users_and_keeps_its_controller_to_itself(
    model: dict[str, Any],
) -> None:
    """Clients log in with SCRAM (the users kafka-init formats the volume with: the server's,
    the relay's and the runner's); the controller and the broker's own listener are on the
    container's loopback, where nobody on the network can add a user."""
    kafka, init = model["services"]["kafka"]["environment"], model["services"]["kafka-init"]
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    for name, protocol in protocols.items():
        assert protocol == "SASL_PLAINTEXT" or listeners[name].startswith("127.0.0.1:"), name
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    script = "\n".join(init["command"])
    for service in ("checkout", "relay", "runner"):
        user = model["services"][service]["environment"]["KAFKA_SASL_USERNAME"]
        assert f"name={user},password=$(cat /run/secrets/kafka_{user}_password)" in script
    assert kafka["CLUSTER_ID"] == init["environment"]["CLUSTER_ID"]


def test_kafka_allows_each_user_its_part_only(model: dict[str, Any]) -> None:
    """The broker authorizes (nothing without an ACL); kafka-acls allows the relay's user to
    publish to the topic the relay uses and the runner's to consume it in the runners' group,
    as tests/integration/test_kafka_auth.py's broker does, and on the status topic the
    server's to write and read, the relay's and the runner's to write; the processes start
    after it. Its admin user's password is the two Kafka jobs' only."""
    services = model["services"]
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith(".StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert set(kafka["KAFKA_SUPER_USERS"].split(";")) == {"User:admin", "User:ANONYMOUS"}
    job = services["kafka-acls"]
    script = "\n".join(job["command"])
    # The relay and the runners use their defaults, which the job names.
    for service in PROCESSES:
        assert not {"KAFKA_TOPIC", "STATUS_TOPIC"} & set(services[service]["environment"])
    assert "RUNNER_GROUP_ID" not in services["runner"]["environment"]
    relay, runner = RelaySettings.from_env({}), RunnerSettings.from_env({})
    assert runner.kafka_topic == relay.kafka_topic
    assert runner.status_topic == relay.status_topic == ServerSettings().status_topic
    assert job["environment"] == {
        "TOPIC": relay.kafka_topic,
        "STATUS": relay.status_topic,
        "GROUP": runner.runner_group_id,
    }
    grants = [line.split("acls ", 1)[1] for line in script.splitlines() if line.startswith("acls ")]
    assert grants == [
        "--allow-principal User:relay --operation Describe --operation Create --operation Write "
        '--topic "$TOPIC"',
        '--allow-principal User:runner --operation Describe --operation Read --topic "$TOPIC"',
        '--allow-principal User:runner --operation Read --group "$GROUP"',
        "--allow-principal User:checkout --operation Describe --operation Create --operation "
        'Write --operation Read --topic "$STATUS"',
        "--allow-principal User:relay --operation Describe --operation Create --operation Write "
        '--topic "$STATUS"',
        '--allow-principal User:runner --operation Describe --operation Write --topic "$STATUS"',
    ]
    for service in PROCESSES:
        waits = services[service]["depends_on"]["kafka-acls"]
        assert waits["condition"] == "service_completed_successfully"
    holders = {
        name
        for name, service in services.items()
        if any(s["source"] == "kafka_admin_password" for s in service.get("secrets", []))
    }
    assert holders == {"kafka-init", "kafka-acls"}
    assert "name=admin,password=$(cat /run/secrets/kafka_admin_password)" in "\n".join(
        services["kafka-init"]["command"]
    )
