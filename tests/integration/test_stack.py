"""The whole local stack as `make run` starts it (on free ports): reflection and health for
grpcurl, and the REST health paths through a real Envoy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devstack import tool_path
from devstack._stack import LocalStack
from tests.integration import curl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def grpcurl(stack: LocalStack, *args: str) -> str:
    """grpcurl as a person runs it: `grpcurl -plaintext ADDRESS VERB [SYMBOL]`."""
    result = subprocess.run(
        [str(tool_path("grpcurl")), "-plaintext", f"127.0.0.1:{stack.ports.grpc}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def http(method: str, url: str) -> tuple[int, str, Any]:
    reply = curl.run_sync("-X", method, url, timeout_s=10)
    assert reply.exit_code == 0, reply.stderr
    return reply.status, reply.headers["content-type"], reply.json()


def test_reflection_lists_the_services(stack: LocalStack) -> None:
    services = grpcurl(stack, "list").split()
    assert {"checkout.v1.CheckoutService", "grpc.health.v1.Health"} <= set(services)
    assert any("grpc.reflection" in s for s in services)


def test_reflection_describes_the_contract(stack: LocalStack) -> None:
    description = grpcurl(stack, "describe", "checkout.v1.CheckoutService")
    for method in ("UploadVideo", "WatchStatus", "ListStatuses", "GetResult", "Health"):
        assert f"rpc {method}" in description


def test_health_check_is_serving(stack: LocalStack) -> None:
    answer = json.loads(grpcurl(stack, "grpc.health.v1.Health/Check"))
    assert answer == {"status": "SERVING"}


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/health"])
def test_rest_health_through_envoy(stack: LocalStack, path: str) -> None:
    status, content_type, body = http("GET", f"http://127.0.0.1:{stack.ports.rest}{path}")
    assert status == 200
    assert content_type.startswith("application/json")
    assert body["status"] == "ok"
    assert body["dependencies"] == {"storage": "ok", "database": "ok"}


def test_unknown_rest_path_is_a_json_404(stack: LocalStack) -> None:
    status, content_type, body = http("GET", f"http://127.0.0.1:{stack.ports.rest}/api/nope")
    assert status == 404
    assert content_type.startswith("application/json")
    assert body["code"] == 5  # NOT_FOUND, in the service's one error shape
    assert body["details"][0]["reason"] == "ROUTE_NOT_FOUND"


def test_envoy_config_is_rendered_from_the_template(stack: LocalStack) -> None:
    config = Path(stack.envoy.config_path).read_text()
    assert f"port_value: {stack.ports.rest}" in config
    assert "${" not in config


def test_envoy_port_also_serves_native_grpc(stack: LocalStack) -> None:
    result = subprocess.run(
        [str(tool_path("grpcurl")), "-plaintext", f"127.0.0.1:{stack.ports.rest}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "checkout.v1.CheckoutService" in result.stdout.split()


def test_envoy_port_serves_grpc_web(stack: LocalStack, tmp_path: Path) -> None:
    # A grpc-web call as a browser makes it: one frame (flag 0, length 0: an empty
    # HealthRequest) POSTed with the grpc-web content type.
    body = tmp_path / "frame.bin"
    body.write_bytes(b"\x00\x00\x00\x00\x00")
    reply = curl.run_sync(
        "-H",
        "Content-Type: application/grpc-web+proto",
        "-H",
        "X-Grpc-Web: 1",
        "--data-binary",
        f"@{body}",
        f"http://127.0.0.1:{stack.ports.rest}/checkout.v1.CheckoutService/Health",
        timeout_s=30,
    )
    assert reply.exit_code == 0, reply.stderr
    headers = reply.head.lower()
    assert headers.startswith("http/1.1 200"), headers
    assert "content-type: application/grpc-web+proto" in headers
    response = reply.body
    assert response[0] == 0  # a data frame: the HealthResponse
    length = int.from_bytes(response[1:5], "big")
    assert b"ok" in response[5 : 5 + length]
    assert b"grpc-status:0" in response[5 + length :].replace(b" ", b"")  # the trailer frame
