"""tools/render_envoy.py: the servers in Envoy's clusters, what is retried, how servers are
health-checked, which budget each kind of call goes to, and the host names Envoy answers for
(the rendered YAML, read back)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.render_envoy import Budgets, parse_budget, parse_upstream, render_envoy_config

DESCRIPTOR = Path("build/checkout.pb")
OPENAPI = Path("docs/openapi.yaml")
REPO = Path(__file__).resolve().parents[2]
SERVICE = "/checkout.v1.CheckoutService/"


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


CLUSTERS = (
    "checkout_grpc",
    "checkout_uploads",
    "checkout_watches",
    "checkout_downloads",
    "checkout_public",
)
SHARED = ("health_checks", "outlier_detection", "common_lb_config", "load_assignment")


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The five clusters by name: the same servers, checked and ejected alike (only their
    budgets differ)."""
    found = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert tuple(found) == CLUSTERS
    first = found[CLUSTERS[0]]
    for other in CLUSTERS[1:]:
        for key in SHARED:
            if key == "load_assignment":
                assert found[other][key]["endpoints"] == first[key]["endpoints"]
            else:
                assert found[other][key] == first[key], (other, key)
        assert found[other].get("transport_socket") == first.get("transport_socket")
    return found


def cluster(config: dict[str, Any]) -> dict[str, Any]:
    return clusters(config)["checkout_grpc"]


def endpoints(config: dict[str, Any]) -> list[tuple[str, int]]:
    (group,) = cluster(config)["load_assignment"]["endpoints"]
    found = []
    for entry in group["lb_endpoints"]:
        address = entry["endpoint"]["address"]["socket_address"]
        found.append((address["address"], address["port_value"]))
    return found


def manager(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


def virtual_hosts(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(manager(config)["route_config"]["virtual_hosts"])


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    served, _unknown = virtual_hosts(config)
    return list(served["routes"])


def route_for(table: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """The first route of `table` that matches `path`, as Envoy picks it."""
    for route in table:
        match = route["match"]
        if (
            match.get("path") == path
            or ("prefix" in match and path.startswith(match["prefix"]))
            or ("safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path))
        ):
            return route
    raise AssertionError(f"no route for {path}")


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


def test_only_reads_are_retried_once_they_reached_a_server(tmp_path: Path) -> None:
    """Reads are retried on UNAVAILABLE too; writes (uploads first) only when they reached no
    server: a refused connection or stream."""
    table = routes(render(tmp_path, upstream_port=50051))
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

    def retried_on(path: str) -> set[str]:
        policy = route_for(table, path)["route"].get("retry_policy")
        return set(policy["retry_on"].split(",")) if policy else set()

    unsent = {"connect-failure", "refused-stream"}
    assert all(retried_on(SERVICE + m) == unsent | {"unavailable"} for m in reads)
    assert retried_on("/grpc.health.v1.Health/Check") == unsent | {"unavailable"}
    assert all(retried_on(SERVICE + m) == unsent for m in writes)
    for route in table:
        if policy := route.get("route", {}).get("retry_policy"):
            assert policy["num_retries"] == 2
            (predicate,) = policy["retry_host_predicate"]
            assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts"
    # The catch-all, last, retries only what reached no server.
    assert table[-1]["match"] == {"prefix": "/"}
    assert set(table[-1]["route"]["retry_policy"]["retry_on"].split(",")) == unsent


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


@pytest.mark.parametrize(
    ("path", "cluster_name"),
    [
        (SERVICE + "UploadVideo", "checkout_uploads"),
        (SERVICE + "UploadVideoHttp", "checkout_uploads"),
        (SERVICE + "WriteUpload", "checkout_uploads"),
        (SERVICE + "WriteUploadHttp", "checkout_uploads"),
        (SERVICE + "WatchStatus", "checkout_watches"),
        (SERVICE + "GetVideo", "checkout_downloads"),
        (SERVICE + "ListStatuses", "checkout_grpc"),
        (SERVICE + "Health", "checkout_grpc"),
        (SERVICE + "StartResumableUpload", "checkout_grpc"),
        (SERVICE + "Cleanup", "checkout_grpc"),
        ("/grpc.health.v1.Health/Check", "checkout_public"),
        ("/grpc.health.v1.Health/Watch", "checkout_public"),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "checkout_public"),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "checkout_public"),
        ("/no.such.Service/Call", "checkout_public"),
    ],
)
def test_each_kind_of_call_has_its_budget(tmp_path: Path, path: str, cluster_name: str) -> None:
    config = render(tmp_path, upstream_port=50051)
    assert route_for(routes(config), path)["route"]["cluster"] == cluster_name


def test_downloads_have_no_overall_timeout_and_are_retried_only_as_reads(
    tmp_path: Path,
) -> None:
    route = route_for(routes(render(tmp_path, upstream_port=50051)), SERVICE + "GetVideo")
    assert route["route"]["timeout"] == "0s"  # a large video to a slow client
    assert "unavailable" in route["route"]["retry_policy"]["retry_on"]


def test_the_budgets_are_the_clusters_circuit_breakers(tmp_path: Path) -> None:
    budgets = Budgets(
        unary_requests=7,
        upload_requests=5,
        watch_requests=3,
        download_requests=4,
        public_requests=2,
    )
    config = render(tmp_path, upstream_port=50051, budgets=budgets)
    expected = {
        "checkout_grpc": 7,
        "checkout_uploads": 5,
        "checkout_watches": 3,
        "checkout_downloads": 4,
        "checkout_public": 2,
    }
    for name, found in clusters(config).items():
        (threshold,) = found["circuit_breakers"]["thresholds"]
        assert threshold["priority"] == "DEFAULT"
        assert threshold["max_requests"] == threshold["max_pending_requests"] == expected[name]
        assert threshold["max_retries"] == budgets.retries
    http2 = manager(config)["http2_protocol_options"]
    assert http2["max_concurrent_streams"] == budgets.streams_per_connection
    (limit, *_) = manager(config)["http_filters"]
    assert limit["name"] == "envoy.filters.http.local_ratelimit"
    assert limit["typed_config"]["local_rate_limit_per_downstream_connection"] is True
    monitors = {
        m["name"]: m["typed_config"] for m in config["overload_manager"]["resource_monitors"]
    }
    connections = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert connections["max_active_downstream_connections"] == budgets.max_connections


def test_a_budget_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="watch_requests must be at least 1"):
        Budgets(watch_requests=0)


def test_parse_budget() -> None:
    assert parse_budget("watch_requests=8") == ("watch_requests", 8)
    assert parse_budget("watch-requests=8") == ("watch_requests", 8)
    for bad in ("watches=8", "watch_requests", "watch_requests=-1"):
        with pytest.raises(ValueError, match="NAME=N"):
            parse_budget(bad)


def test_only_the_configured_host_names_are_served(tmp_path: Path) -> None:
    config = render(tmp_path, upstream_port=50051, hosts=["api.example.com", "envoy"])
    served, unknown = virtual_hosts(config)
    assert served["domains"] == ["api.example.com", "api.example.com:*", "envoy", "envoy:*"]
    assert unknown["domains"] == ["*"]
    (refuse,) = unknown["routes"]
    assert refuse["direct_response"]["status"] == 421
    # By default (make run, the tests): localhost and 127.0.0.1, any port.
    default, _ = virtual_hosts(render(tmp_path, upstream_port=50051))
    assert default["domains"] == ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"]
    with pytest.raises(ValueError, match="is not a DNS name"):
        render(tmp_path, upstream_port=50051, hosts=["evil.example/*"])


def test_the_admin_interface_listens_on_loopback_by_default(tmp_path: Path) -> None:
    config = render(tmp_path, upstream_port=50051)
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_the_images_rendering_keeps_admin_on_loopback() -> None:
    """deploy/Dockerfile renders the compose image's config with these options."""
    render_line = (REPO / "deploy" / "Dockerfile").read_text().partition("render_envoy.py")[2]
    options = render_line.partition("&& pip")[0]
    assert "--admin-address 127.0.0.1" in options
    assert "0.0.0.0 --admin" not in options


def test_the_command_line_takes_hosts_and_budgets(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    base = [sys.executable, "tools/render_envoy.py", str(out), "--descriptor", "d"]
    subprocess.run(
        [
            *base,
            "--openapi",
            "o",
            "--host",
            "envoy,api.example.com",
            "--budget",
            "watch_requests=9",
        ],
        cwd=REPO,
        check=True,
        timeout=60,
    )
    config = yaml.safe_load(out.read_text())
    served, _ = virtual_hosts(config)
    assert served["domains"][::2] == ["envoy", "api.example.com"]
    (threshold,) = clusters(config)["checkout_watches"]["circuit_breakers"]["thresholds"]
    assert threshold["max_requests"] == 9
