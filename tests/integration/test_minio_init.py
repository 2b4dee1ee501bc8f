"""Compose's minio service and minio-init job, run here without Docker: the real MinIO started
with the minio service's environment (its root password from MINIO_ROOT_PASSWORD_FILE), then
the job's own script (deploy/minio/init.sh, through the volume and entrypoint the model
names) with `mc` (devstack builds it) and the job's environment, every /run/secrets/ file
pointed at one of tools/make_compose_secrets.py. The users it makes can do their part and not
the other's (the whole of each policy: test_minio_policies.py)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from miniopy_async.api import Minio
from miniopy_async.error import S3Error

from devstack import MinIO, free_port, tool_path
from tests.integration.compose_model import load_model
from tools.make_compose_secrets import make_compose_secrets

SECRETS_DIR = "/run/secrets/"


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """The project as docker compose loads it with .env.example (compose_model.py)."""
    return load_model()


def environment(model: dict[str, Any], service: str, credentials: Path) -> dict[str, str]:
    """The service's environment, each secret's /run/secrets/ path replaced by the file of
    that name in `credentials` (what compose mounts there)."""
    files = {name: Path(secret["file"]).name for name, secret in model["secrets"].items()}
    mounts = {
        s["target"]: credentials / files[s["source"]] for s in model["services"][service]["secrets"]
    }
    env: dict[str, str] = model["services"][service]["environment"]
    for value in env.values():
        assert not value.startswith(SECRETS_DIR) or value in mounts, value
    return {name: str(mounts.get(value, value)) for name, value in env.items()}


class ComposeMinIO(MinIO):
    """The minio service's MinIO: the root password only from MINIO_ROOT_PASSWORD_FILE."""

    def __init__(self, *, env: dict[str, str], data_dir: Path) -> None:
        super().__init__(
            port=free_port(),
            console_port=free_port(),
            data_dir=data_dir,
            access_key=env["MINIO_ROOT_USER"],
            secret_key="",  # not given: the file is where MinIO reads it from
        )
        self.password_file = env["MINIO_ROOT_PASSWORD_FILE"]

    def _env(self) -> dict[str, str]:
        env = super()._env()
        del env["MINIO_ROOT_PASSWORD"]
        env["MINIO_ROOT_PASSWORD_FILE"] = self.password_file
        return env


@dataclass
class Deployment:
    minio: ComposeMinIO
    credentials: Path
    job_env: dict[str, str]  # the minio-init job's environment, here
    script: Path

    def client(self, access_key: str, secret_file: str) -> Minio:
        secret = (self.credentials / secret_file).read_text().strip()
        return Minio(self.minio.endpoint, access_key=access_key, secret_key=secret, secure=False)

    async def run_job(self) -> str:
        """The job's entrypoint, `sh init.sh`: its output; it must succeed."""
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            str(self.script),
            env=self.job_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, output.decode()
        return output.decode()


@pytest.fixture
def deployment(model: dict[str, Any], tmp_path: Path) -> Iterator[Deployment]:
    mc = tool_path("mc")
    assert mc.is_file(), f"{mc} is missing: run `python -m devstack install`"
    credentials = tmp_path / "credentials"
    make_compose_secrets(credentials)
    minio = ComposeMinIO(env=environment(model, "minio", credentials), data_dir=tmp_path / "minio")
    init = model["services"]["minio-init"]
    # The entrypoint runs the script of the folder the job mounts.
    shell, script = init["entrypoint"]
    assert shell == "/bin/sh"
    (volume,) = (v for v in init["volumes"] if script.startswith(v["target"] + "/"))
    job_env = environment(model, "minio-init", credentials)
    job_env |= {
        "MINIO_URL": minio.url,  # http://minio:9000 in compose
        "PATH": f"{mc.parent}{os.pathsep}{os.environ['PATH']}",
        "MC_CONFIG_DIR": str(tmp_path / "mc"),
    }
    minio.start()
    try:
        yield Deployment(
            minio=minio,
            credentials=credentials,
            job_env=job_env,
            script=Path(volume["source"]) / script.removeprefix(volume["target"] + "/"),
        )
    finally:
        minio.stop()


async def can_put(client: Minio, bucket: str, key: str) -> bool:
    """Whether `client` may write `key`; False only for AccessDenied."""
    try:
        await client.put_object(bucket, key, io.BytesIO(b"{}"), 2)
    except S3Error as exc:
        if exc.code == "AccessDenied":
            return False
        raise
    return True


@pytest.fixture
async def clients(deployment: Deployment) -> AsyncIterator[dict[str, Minio]]:
    """The root user and the two users, each with the key of its file."""
    made = {
        "root": deployment.client(deployment.job_env["MINIO_ROOT_USER"], "minio-root-password"),
        "checkout-server": deployment.client("checkout-server", "minio-checkout-secret-key"),
        "checkout-runner": deployment.client("checkout-runner", "minio-runner-secret-key"),
    }
    yield made
    for client in made.values():
        await client.close_session()  # type: ignore[no-untyped-call]


@pytest.mark.timeout(120)
async def test_the_init_job_makes_the_bucket_and_the_users(
    deployment: Deployment, clients: dict[str, Minio]
) -> None:
    output = await deployment.run_job()
    assert "MinIO user checkout-server: policy checkout-server" in output
    assert "MinIO user checkout-runner: policy checkout-runner" in output
    # The root user logs in with the password of its file (MINIO_ROOT_PASSWORD_FILE).
    (bucket,) = deployment.job_env["BUCKETS"].split()
    assert [b.name for b in await clients["root"].list_buckets()] == [bucket]
    server, runner = clients["checkout-server"], clients["checkout-runner"]
    assert await can_put(server, bucket, "input/v1.mp4")
    assert not await can_put(server, bucket, "output/v1.json")
    assert await can_put(runner, bucket, "output/v1.json")
    assert not await can_put(runner, bucket, "input/v2.mp4")


@pytest.mark.timeout(120)
async def test_the_init_job_runs_again_at_every_start_and_takes_new_keys(
    deployment: Deployment, clients: dict[str, Minio]
) -> None:
    await deployment.run_job()
    (bucket,) = deployment.job_env["BUCKETS"].split()
    assert await can_put(clients["checkout-runner"], bucket, "output/v1.json")
    # A new key in the runner's file, and the next start's run: the old key is refused.
    (deployment.credentials / "minio-runner-secret-key").write_text("a-new-runner-secret-key\n")
    output = await deployment.run_job()  # the policies attached already pass too
    assert "MinIO user checkout-runner: policy checkout-runner" in output
    with pytest.raises(S3Error) as refused:
        await can_put(clients["checkout-runner"], bucket, "output/v2.json")
    assert refused.value.code == "SignatureDoesNotMatch"
    renewed = deployment.client("checkout-runner", "minio-runner-secret-key")
    try:
        assert await can_put(renewed, bucket, "output/v2.json")
        assert not await can_put(renewed, bucket, "input/v2.mp4")
    finally:
        await renewed.close_session()  # type: ignore[no-untyped-call]
    # The objects of the first run are still there.
    assert await clients["root"].stat_object(bucket, "output/v1.json")
