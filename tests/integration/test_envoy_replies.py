"""Envoy's own timeout and size replies, through a real Envoy front, in the one JSON error
shape REST clients get (docs/api.md, "Errors Envoy answers itself"): 408 when the request
headers do not arrive in time, and 413 for a unary call's body over the buffer filter's
1 MiB (REST; a gRPC client gets UNKNOWN, Payload Too Large). The other replies of Envoy's own
(400, 404, 431, 503) are in test_rest.py.

504 (UPSTREAM_TIMEOUT): a unary call whose server accepts it and never answers is answered by
Envoy itself after the unary timeout (Budgets.unary_timeout_s), here shortened.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.health import SERVICE_NAME, new_health_servicer
from checkout_server.wiring.server import App
from devstack import free_port
from tests.helpers import MiB
from tests.integration import curl
from tests.integration.envoy_front import async_envoy_front, envoy_error
from tools.render_envoy import Budgets

# The 408 test waits for Envoy's request_headers_timeout (30 s, deploy/envoy/).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# deploy/envoy/envoy.template.yaml: request_headers_timeout.
REQUEST_HEADERS_TIMEOUT_S = 30


async def test_request_headers_that_do_not_arrive_in_time_are_408_in_the_one_shape(
    tmp_path: Path,
) -> None:
    """Half a request's headers, then nothing: Envoy gives up after request_headers_timeout.
    The request never reaches a server, so none is behind this front."""
    async with async_envoy_front(tmp_path, [free_port()]) as front:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        try:
            writer.write(b"GET /api/status/all HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n")
            await writer.drain()
            # Envoy's own deadline is the behaviour: the read waits for it, with a margin
            # for a loaded machine (curl cannot send half a request, hence the raw socket).
            async with asyncio.timeout(REQUEST_HEADERS_TIMEOUT_S + 30):
                head = await reader.readuntil(b"\r\n\r\n")
                status_line, *header_lines = head.decode().split("\r\n")
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in header_lines if line)
                }
                body = await reader.readexactly(int(headers["content-length"]))
        finally:
            writer.close()
    assert status_line.split()[1] == "408", status_line
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert envoy_error(error) == (4, "REQUEST_TIMEOUT")
    assert error["message"] == "Запрос не был получен целиком вовремя"
    assert error["details"][0]["metadata"]["envoy_details"] == "request_header_timeout"


async def test_a_json_body_over_the_limit_is_413_in_the_one_shape(app: App, tmp_path: Path) -> None:
    """The buffer filter's 1 MiB (deploy/envoy/): the body never reaches a server. The
    uploads' own routes (http_body) stream and are limited by the server instead."""
    big = tmp_path / "request.json"
    big.write_text('{"video_id": "' + "a" * (2 * MiB) + '"}')
    async with async_envoy_front(tmp_path, [app.port]) as front:
        status, body = await curl.answer(
            "-X",
            "POST",
            f"{front.url}/api/request",
            "-H",
            "content-type: application/json",
            "--data-binary",
            f"@{big}",
            timeout_s=30,
        )
    assert status == 413, body
    assert envoy_error(body) == (8, "BODY_TOO_LARGE")


async def test_a_grpc_message_over_the_limit_never_reaches_a_server(
    app: App, tmp_path: Path
) -> None:
    """The same limit for a native gRPC unary call: refused by Envoy, while a small call on
    the same channel goes through."""
    async with (
        async_envoy_front(tmp_path, [app.port]) as front,
        grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel,
    ):
        stub = pb_grpc.CheckoutServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateRequest(pb.CreateRequestRequest(video_id="a" * (2 * MiB)), timeout=30)
        small = await stub.Health(pb.HealthRequest(), timeout=30)
    assert refused.value.code() is grpc.StatusCode.UNKNOWN, refused.value
    # Envoy's gRPC form of its 413 (UNKNOWN is what it maps 413 to).
    assert refused.value.details() == "Payload Too Large"
    assert small.status


@asynccontextmanager
async def hanging_server() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A gRPC server that reports itself healthy and takes every GetStatus without ever
    answering (until the event it yields is set): a server stuck on a dependency."""
    release = asyncio.Event()

    async def get_status(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await release.wait()
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE_NAME,
                {"GetStatus": grpc.unary_unary_rpc_method_handler(get_status)},
            )
        ]
    )
    health = new_health_servicer()
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port, release
    finally:
        release.set()
        await server.stop(None)


async def test_a_unary_call_a_server_never_answers_is_504_in_the_one_shape(
    tmp_path: Path,
) -> None:
    timeout_s = 2
    async with (
        hanging_server() as (port, _),
        async_envoy_front(tmp_path, [port], budgets=Budgets(unary_timeout_s=timeout_s)) as front,
    ):
        started = time.monotonic()
        status, body = await curl.answer(f"{front.url}/api/status/{uuid.uuid4()}", timeout_s=60)
        waited = time.monotonic() - started
    assert status == 504, body
    assert envoy_error(body) == (4, "UPSTREAM_TIMEOUT")
    assert body["details"][0]["metadata"]["envoy_details"] == "response_timeout"
    assert waited >= timeout_s  # Envoy's timeout, not an earlier failure
