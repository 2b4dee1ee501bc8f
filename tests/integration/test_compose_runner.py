"""The detection runner in docker-compose.yml as docker compose loads it (composecheck): its
own image stage, the settings it shares with the server, started after what it needs, as a
group of replicas; and its healthcheck's command against a real runner's metrics endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack import free_port
from devstack._install import COMPOSECHECK, install_composecheck
from devstack._paths import REPO_ROOT
from devstack._stack import RunnerService

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


@pytest.fixture(scope="module")
def runner_service() -> dict[str, Any]:
    install_composecheck()
    res = subprocess.run(
        [str(COMPOSECHECK), "-json", str(COMPOSE), str(ENV_EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    service: dict[str, Any] = json.loads(res.stdout)["services"]["runner"]
    return service


@pytest.mark.timeout(60)
def test_the_runner_is_a_group_of_its_own_image(runner_service: dict[str, Any]) -> None:
    assert runner_service["build"]["target"] == "runner"
    assert "AS runner" in DOCKERFILE.read_text()
    assert "--no-deps -r /tmp/no-deps.txt" in DOCKERFILE.read_text()
    env = runner_service["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["MINIO_ENDPOINT"] == "minio:9000"
    assert env["MONGO_URI"].startswith("mongodb://")
    assert "KAFKA_TOPIC" not in env  # the relay's default topic
    assert "RUNNER_GROUP_ID" not in env  # one group: the replicas share the partitions
    assert runner_service["deploy"]["replicas"] == 2
    depends = {name: d["condition"] for name, d in runner_service["depends_on"].items()}
    assert depends == {
        "mongo": "service_healthy",
        "minio": "service_healthy",
        "kafka": "service_healthy",
        "relay": "service_healthy",  # the relays made the topic, with its partitions
    }


@pytest.mark.timeout(120)
def test_the_healthcheck_passes_against_a_started_runner(
    runner_service: dict[str, Any], tmp_path: Path
) -> None:
    """The runner answers its metrics port before any backend is up (it keeps retrying
    them); the compose command, pointed at that port, exits 0, and 1 at a closed port."""
    port = free_port()
    runner = RunnerService(
        name="runner",
        port=port,
        env={
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/",
            "MONGO_TIMEOUT_MS": "500",
            "LOG_FORMAT": "json",
        },
        log_path=tmp_path / "runner.log",
    )
    command = runner_service["healthcheck"]["test"]
    assert command[:2] == ["CMD", "python"]
    code = command[3].replace(":9465/", f":{port}/")
    with runner:
        passed = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    assert passed.returncode == 0
    failed = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    assert failed.returncode != 0
