"""Envoy in front of two in-process servers (the config tools/render_envoy.py renders with
`upstreams`, as the soak's): both take calls; once one is stopped, a read that Envoy sent to
it is retried on the other and answered, the stopped one is ejected, and uploads go to the
other. Every call goes through Envoy's REST surface."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app
from devstack import free_port
from tests.helpers import MiB, mp4_bytes, sha256_hex
from tests.integration.envoy_front import async_envoy_front
from tests.integration.storage_checks import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Pair:
    url: str
    admin: str
    ports: tuple[int, int]
    apps: list[App]


@pytest.fixture
async def pair(settings: ServerSettings, tmp_path: Path) -> AsyncIterator[Pair]:
    ports = (free_port(), free_port())
    apps = []
    for port in ports:
        app = await create_app(settings.replace(grpc_addr=f"127.0.0.1:{port}", metrics_addr=""))
        await app.start()
        apps.append(app)
    try:
        async with async_envoy_front(tmp_path, ports) as front:
            yield Pair(front.url, front.admin_url, ports, apps)
    finally:
        for app in apps:
            await app.stop(grace_s=0)


async def admin_text(pair: Pair, path: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(pair.admin + path) as response:
        assert response.status == 200
        return await response.text()


async def health_flags(pair: Pair) -> dict[int, str]:
    """Each server's health flags in Envoy's cluster, by port ("healthy" when none)."""
    flags = {}
    for line in (await admin_text(pair, "/clusters")).splitlines():
        if line.startswith("checkout_grpc::") and "::health_flags::" in line:
            port = int(line.split("::")[1].rpartition(":")[2])
            flags[port] = line.rpartition("::")[2]
    return flags


async def counter(pair: Pair, name: str) -> int:
    text = await admin_text(pair, f"/stats?filter=^cluster[.]checkout_grpc[.]{name}$")
    match = re.search(rf"cluster\.checkout_grpc\.{name}: (\d+)", text)
    assert match is not None, text
    return int(match[1])


async def test_a_stopped_server_costs_reads_nothing(pair: Pair) -> None:
    async def both_healthy() -> bool:
        return set((await health_flags(pair)).values()) == {"healthy"}

    await wait_until(both_healthy, what="both servers healthy in Envoy")
    # One connection: the requests stay on one Envoy worker, whose round robin alternates.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(pair.url, connector=connector) as session:
        for _ in range(4):
            async with session.get("/api/status/all") as response:
                assert response.status == 200
        assert await counter(pair, "upstream_rq_retry") == 0

        await pair.apps[0].stop(grace_s=0)  # refuses connections from now on
        # Health checks need two failed rounds (4 s) to notice; these reads come first, and
        # round robin sends one of them to the stopped server: Envoy retries it elsewhere.
        for _ in range(4):
            async with session.get("/api/status/all") as response:
                assert response.status == 200, await response.text()
        assert await counter(pair, "upstream_rq_retry") >= 1
        # The refused connection ejected it (outlier detection), so uploads, which Envoy
        # never retries, all reach the live server.
        ejected = "outlier_detection.ejections_enforced_consecutive_local_origin_failure"
        assert await counter(pair, ejected) == 1
        assert "failed_outlier_check" in (await health_flags(pair))[pair.ports[0]]
        data = mp4_bytes(MiB, seed=7)
        for _ in range(2):
            form = aiohttp.FormData()
            form.add_field("file", io.BytesIO(data), filename="v.mp4", content_type="video/mp4")
            async with session.post("/api/upload_video", data=form) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["sha256"] == sha256_hex(data)
