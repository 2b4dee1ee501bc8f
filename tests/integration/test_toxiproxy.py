"""devstack's toxiproxy and its API client, against the real toxiproxy-server in front of a
TCP echo server of the test's own: each toxic does to the bytes what its name says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from devstack import (
    Toxiproxy,
    ToxiproxyClient,
    ToxiproxyError,
    bandwidth,
    free_port,
    latency,
    limit_data,
    reset_peer,
    timeout,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Toxiproxy]:
    server = Toxiproxy(port=free_port(), log_path=tmp_path_factory.mktemp("tp") / "tp.log")
    server.start(30)
    yield server
    server.stop()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def api(toxiproxy: Toxiproxy) -> AsyncIterator[ToxiproxyClient]:
    client = toxiproxy.client()
    yield client
    for proxy in await asyncio.to_thread(client.proxies):
        await asyncio.to_thread(client.delete_proxy, proxy.name)


async def round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    """Send `payload`, read as many bytes back (or until the connection ends); the time."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        received = b""
        while len(received) < len(payload):
            block = await reader.read(65536)
            if not block:
                break
            received += block
    finally:
        writer.close()
    return received, time.monotonic() - t0


async def test_a_proxy_forwards_and_reports_its_version(
    api: ToxiproxyClient, echo_port: int
) -> None:
    proxy = await asyncio.to_thread(api.create_proxy, "plain", upstream=f"127.0.0.1:{echo_port}")
    assert proxy.enabled
    assert proxy.port != 0
    assert (await round_trip(proxy.port, b"hello"))[0] == b"hello"
    assert "git" in await asyncio.to_thread(api.version)  # v2.5.0 built by `go install`
    assert [p.name for p in await asyncio.to_thread(api.proxies)] == ["plain"]


async def test_latency_delays_and_its_removal_restores(
    api: ToxiproxyClient, echo_port: int
) -> None:
    proxy = await asyncio.to_thread(api.create_proxy, "slow", upstream=f"127.0.0.1:{echo_port}")
    name = await asyncio.to_thread(api.add_toxic, "slow", latency(400))
    assert await asyncio.to_thread(api.toxics, "slow") == [name]
    data, elapsed = await round_trip(proxy.port, b"ping")
    assert data == b"ping"
    assert elapsed >= 0.4
    await asyncio.to_thread(api.remove_toxic, "slow", name)
    assert await asyncio.to_thread(api.toxics, "slow") == []
    data, elapsed = await round_trip(proxy.port, b"ping")
    assert data == b"ping"
    assert elapsed < 0.4


async def test_a_disabled_proxy_refuses_connections(api: ToxiproxyClient, echo_port: int) -> None:
    proxy = await asyncio.to_thread(api.create_proxy, "down", upstream=f"127.0.0.1:{echo_port}")
    await asyncio.to_thread(api.set_enabled, "down", False)
    with pytest.raises(ConnectionRefusedError):
        await round_trip(proxy.port, b"x")
    await asyncio.to_thread(api.set_enabled, "down", True)
    assert (await round_trip(proxy.port, b"back"))[0] == b"back"


async def test_limit_data_cuts_a_stream_after_its_bytes(
    api: ToxiproxyClient, echo_port: int
) -> None:
    proxy = await asyncio.to_thread(api.create_proxy, "cut", upstream=f"127.0.0.1:{echo_port}")
    await asyncio.to_thread(api.add_toxic, "cut", limit_data(1000, stream="downstream"))
    data, _ = await round_trip(proxy.port, b"x" * 5000)
    assert len(data) == 1000


async def test_bandwidth_slows_a_transfer(api: ToxiproxyClient, echo_port: int) -> None:
    proxy = await asyncio.to_thread(api.create_proxy, "thin", upstream=f"127.0.0.1:{echo_port}")
    await asyncio.to_thread(api.add_toxic, "thin", bandwidth(100))  # 100 KB/s
    data, elapsed = await round_trip(proxy.port, b"y" * 100_000)
    assert len(data) == 100_000
    assert elapsed >= 0.8


async def test_reset_peer_and_timeout_end_connections(api: ToxiproxyClient, echo_port: int) -> None:
    proxy = await asyncio.to_thread(api.create_proxy, "reset", upstream=f"127.0.0.1:{echo_port}")
    await asyncio.to_thread(api.add_toxic, "reset", reset_peer())
    with pytest.raises(ConnectionResetError):
        await round_trip(proxy.port, b"z" * 10)
    await asyncio.to_thread(api.reset)
    assert (await round_trip(proxy.port, b"ok"))[0] == b"ok"
    await asyncio.to_thread(api.add_toxic, "reset", timeout(300))
    data, elapsed = await round_trip(proxy.port, b"lost")
    assert data == b""  # nothing passed, and the connection was closed after 0.3 s
    assert elapsed >= 0.3


async def test_api_errors_name_the_request(api: ToxiproxyClient) -> None:
    with pytest.raises(ToxiproxyError, match=r"GET /proxies/missing: HTTP 404"):
        await asyncio.to_thread(api.proxy, "missing")
