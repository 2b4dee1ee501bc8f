"""tools/render_envoy.py: the servers in Envoy's cluster, what is retried and how servers are
health-checked (the rendered YAML, read back)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.render_envoy import parse_upstream, render_envoy_config

DESCRIPTOR = Path("build/checkout.pb")
OPENAPI = Path("docs/openapi.yaml")
REPO = Path(__file__).resolve().parents[2]


def render(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    out = render_envoy_config(
        tmp_path / "envoy.yaml",
        listen_port=8080,
        admin_port=9901,
        descriptor=DESCRIPTOR,
        openapi=OPENAPI,
        **kwargs,
    )
    config: dict[str, Any] = yaml.safe_load(out.read_text())
    return config


def cluster(config: dict[str, Any]) -> dict[str, Any]:
    (only,) = config["static_resources"]["clusters"]
    assert only["name"] == "checkout_grpc"
    return dict(only)


def endpoints(config: dict[str, Any]) -> list[tuple[str, int]]:
    (group,) = cluster(config)["load_assignment"]["endpoints"]
    found = []
    for entry in group["lb_endpoints"]:
        address = entry["endpoint"]["address"]["socket_address"]
        found.append((address["address"], address["port_value"]))
    return found


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (listener,) = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    return list(host["routes"])


def test_one_server_by_host_and_port(tmp_path: Path) -> None:
    config = render(tmp_path, upstream_host="checkout", upstream_port=50051)
    assert endpoints(config) == [("checkout", 50051)]


def test_every_server_of_the_list(tmp_path: Path) -> None:
    config = render(tmp_path, upstreams=[("127.0.0.1", 50051), ("127.0.0.2", 50061)])
    assert endpoints(config) == [("127.0.0.1", 50051), ("127.0.0.2", 50061)]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"upstream_port": 1, "upstreams": [("127.0.0.1", 2)]}],
    ids=["neither", "both"],
)
def test_servers_given_once(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="either upstream_port"):
        render(tmp_path, **kwargs)


def test_servers_are_health_checked_and_ejected_on_connect_failures(tmp_path: Path) -> None:
    checked = cluster(render(tmp_path, upstream_port=50051))
    (check,) = checked["health_checks"]
    assert check["grpc_health_check"] == {"service_name": "checkout.v1.CheckoutService"}
    outliers = checked["outlier_detection"]
    assert outliers["split_external_local_origin_errors"] is True
    assert outliers["consecutive_local_origin_failure"] == 1
    # The gRPC errors the servers answer never eject one.
    assert outliers["enforcing_consecutive_5xx"] == 0
    assert outliers["enforcing_consecutive_gateway_failure"] == 0
    # Both take effect at once (tests/integration/test_envoy_servers.py failed with 1 s).
    assert checked["common_lb_config"] == {"update_merge_window": "0s"}


def test_only_reads_are_retried(tmp_path: Path) -> None:
    table = routes(render(tmp_path, upstream_port=50051))
    retried = [r for r in table if "retry_policy" in r.get("route", {})]
    patterns = [
        r["match"].get("safe_regex", {}).get("regex") or r["match"]["path"] for r in retried
    ]
    service = "/checkout.v1.CheckoutService/"
    reads = ["ListStatuses", "GetStatus", "GetResult", "Health", "WatchStatus", "QueryUploadStatus"]
    writes = [
        "UploadVideo",
        "UploadVideoHttp",
        "WriteUpload",
        "WriteUploadHttp",
        "StartResumableUpload",
        "CreateRequest",
        "Cleanup",
        "CancelUpload",
    ]

    def is_retried(path: str) -> bool:
        return any(re.fullmatch(p, path) or p == path for p in patterns)

    assert all(is_retried(service + m) for m in reads)
    assert is_retried("/grpc.health.v1.Health/Check")
    assert not any(is_retried(service + m) for m in writes)
    for route in retried:
        policy = route["route"]["retry_policy"]
        assert set(policy["retry_on"].split(",")) == {
            "connect-failure",
            "refused-stream",
            "unavailable",
        }
    # The catch-all, last, has none.
    assert table[-1]["match"] == {"prefix": "/"}
    assert "retry_policy" not in table[-1]["route"]


def test_the_command_line_takes_a_list_of_servers(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    base = [
        sys.executable,
        "tools/render_envoy.py",
        str(out),
        "--descriptor",
        "d",
        "--openapi",
        "o",
    ]
    subprocess.run(
        [*base, "--upstream", "127.0.0.1:50051", "--upstream", "localhost:50061"],
        cwd=REPO,
        check=True,
        timeout=60,
    )
    assert endpoints(yaml.safe_load(out.read_text())) == [
        ("127.0.0.1", 50051),
        ("localhost", 50061),
    ]
    refused = subprocess.run(
        [*base, "--upstream", "nowhere"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "is not HOST:PORT" in refused.stderr


def test_parse_upstream() -> None:
    assert parse_upstream("checkout:50051") == ("checkout", 50051)
    for bad in ("checkout", ":50051", "checkout:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_upstream(bad)
