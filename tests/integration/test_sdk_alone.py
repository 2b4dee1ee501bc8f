"""The SDK installed alone, as on a client machine: `pip install client/` into a fresh venv
(from PyPI, its stubs built from protos/ by the package's build hook) brings none of the
server's dependencies nor its code, and the venv's `checkout` command talks to the server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from checkout_client.cli import EXIT_OK
from checkout_server.wiring.server import App

# A fresh venv and an install from the index take about a minute; the first test pays it.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]

# What the server needs and a client machine must not get.
SERVER_ONLY = {
    "checkout-service",
    "pymongo",
    "aiokafka",
    "miniopy-async",
    "aiohttp",
    "aiohttp-retry",
    "python-multipart",
    "pydantic-settings",
    "pydantic",
    "prometheus-client",
    "opentelemetry-sdk",
    "grpcio-health-checking",
    "grpcio-reflection",
}
SDK_DEPENDENCIES = {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos", "rich"}


@dataclass(frozen=True)
class SdkVenv:
    root: Path
    python: Path
    checkout: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs the venv's Python (blocking: for the sync tests only)."""
        return subprocess.run(
            [str(self.python), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> SdkVenv:
    root = tmp_path_factory.mktemp("sdk-venv")
    # Nothing of this checkout may leak into the venv through the environment.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not k.startswith("CHECKOUT_")
    }
    # Run from the test's venv, `venv` builds on the base interpreter: none of its packages.
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, env=env, timeout=120)
    bin_dir = root / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO / "client")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=540,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return SdkVenv(root=root, python=python, checkout=bin_dir / "checkout", env=env)


def test_sdk_brings_no_server_dependency(sdk_venv: SdkVenv) -> None:
    listed = sdk_venv.run("-m", "pip", "list", "--format=json")
    assert listed.returncode == 0, listed.stderr
    installed = {canonical(d["name"]) for d in json.loads(listed.stdout)}
    assert "checkout-client" in installed
    assert installed >= SDK_DEPENDENCIES
    assert installed & SERVER_ONLY == set()


def test_sdk_has_its_stubs_and_no_server_code(sdk_venv: SdkVenv) -> None:
    probe = sdk_venv.run(
        "-c",
        "import importlib.util, json, sys\n"
        "import checkout_client\n"
        "from checkout_api.checkout.v1 import checkout_pb2, checkout_pb2_grpc\n"
        "from importlib.resources import files\n"
        "v1 = files('checkout_api') / 'checkout' / 'v1'\n"
        "print(json.dumps({\n"
        "    'client': checkout_client.__file__,\n"
        "    'server': importlib.util.find_spec('checkout_server') is not None,\n"
        "    'typed': (files('checkout_api') / 'py.typed').is_file(),\n"
        "    'stubs': sorted(p.name for p in v1.iterdir() if p.name.endswith('.pyi')),\n"
        "    'service': checkout_pb2.DESCRIPTOR.services_by_name['CheckoutService'].full_name,\n"
        "}))\n",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    # The venv's own copy, not this checkout's.
    assert Path(found["client"]).resolve().is_relative_to(sdk_venv.root.resolve())
    assert found["server"] is False
    assert found["typed"] is True
    assert found["stubs"] == ["checkout_pb2.pyi", "checkout_pb2_grpc.pyi"]
    assert found["service"] == "checkout.v1.CheckoutService"


async def test_sdk_checkout_command_talks_to_the_server(sdk_venv: SdkVenv, app: App) -> None:
    env = {**sdk_venv.env, "CHECKOUT_ADDR": f"127.0.0.1:{app.port}"}

    async def checkout(*args: str) -> tuple[int, str, str]:
        # A subprocess the event loop awaits: the in-process server keeps serving meanwhile.
        process = await asyncio.create_subprocess_exec(
            str(sdk_venv.checkout),
            *args,
            cwd=sdk_venv.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        return await process.wait(), stdout.decode(), stderr.decode()

    code, stdout, stderr = await checkout("health")
    assert code == EXIT_OK, stderr
    assert stdout.splitlines()[0].split() == ["status", "ok"]

    code, stdout, stderr = await checkout("health", "--json")
    assert code == EXIT_OK, stderr
    assert json.loads(stdout) == {
        "status": "ok",
        "dependencies": {"storage": "ok", "database": "ok"},
    }
