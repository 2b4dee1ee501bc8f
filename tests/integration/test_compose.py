"""docker-compose.yml as `docker compose` loads it: the composecheck tool (tools/composecheck,
on compose-go, the loader of docker compose itself) on the repository's file and on broken
copies of it. No Docker engine and no servers needed."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack._install import COMPOSECHECK, install_composecheck
from devstack._paths import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
# What compose reads that must never have a default in the file.
SECRETS = (
    "MONGO_INITDB_ROOT_USERNAME",
    "MONGO_INITDB_ROOT_PASSWORD",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "ADMIN_TOKEN",
)


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
            if not line.startswith("ADMIN_TOKEN=")
        )
    )
    res = run_check(composecheck, COMPOSE, env)
    assert res.returncode == 1
    assert "required variable ADMIN_TOKEN is missing a value" in res.stderr


BROKEN: list[tuple[str, Callable[[str], str], str]] = [
    (
        "unknown-key",
        lambda s: s.replace("    restart: unless-stopped", "    restart_policy: unless-stopped", 1),
        "restart_policy false schema",
    ),
    (
        "bad-condition",
        lambda s: s.replace(
            "kafka: { condition: service_healthy }", "kafka: { condition: service_ready }"
        ),
        "services.relay.depends_on.kafka.condition value must be one of",
    ),
    (
        "undefined-dependency",
        lambda s: s.replace(
            "kafka: { condition: service_healthy }", "kafkaa: { condition: service_healthy }"
        ),
        'service "relay" depends on undefined service "kafkaa"',
    ),
    (
        "healthy-without-healthcheck",  # envoy has none
        lambda s: s.replace(
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
