"""The Helm chart (deploy/helm/checkout) through tools/helm_check.py, the checks `make lint`
runs: the chart passes them, and each fails on a copy of the chart broken the way it guards
against (a missing limit, a privileged container, a wrong probe port, an invalid field, a
chart helm lint refuses). Also: the chart's Envoy config is the template's rendering, Envoy
itself accepts it as the chart fills it in, and the server's probe script tells SERVING,
NOT_SERVING and no answer apart over mTLS. No cluster: nothing is applied anywhere."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from checkout_server.health import HealthReporter, new_health_servicer
from devstack._envoy import validate_envoy_config
from devstack._install import GO_TOOLS, install_go_tool
from devstack._paths import REPO_ROOT
from devstack._process import free_port
from devstack._stack import CONSOLE, DESCRIPTOR, OPENAPI
from tools import helm_envoy
from tools.helm_check import (
    CHART,
    ValuesSet,
    check_chart,
    lint_problems,
    policy_problems,
    render,
    schema_problems,
)
from tools.make_dev_certs import make_compose_certs

DEFAULT = ValuesSet("default", ())
PROBE = CHART / "files" / "grpc_health_probe.py"


@pytest.fixture(scope="module", autouse=True)
def _helm() -> None:
    # A no-op once `make stack` built it (its stamp matches).
    install_go_tool(next(t for t in GO_TOOLS if t.name == "helm"))


def broken_copy(tmp_path: Path, relative: str, edit: Callable[[str], str]) -> Path:
    """A copy of the chart with the file `relative` edited by `edit` (which must change it)."""
    chart = tmp_path / "checkout"
    shutil.copytree(CHART, chart)
    path = chart / relative
    original = path.read_text()
    edited = edit(original)
    assert edited != original, "the edit found nothing to change"
    path.write_text(edited)
    return chart


def replace_once(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} is not in the file exactly once"
        return text.replace(old, new)

    return edit


@pytest.mark.timeout(60)
def test_the_chart_passes_every_check() -> None:
    assert check_chart(CHART) == []


@pytest.mark.timeout(30)
def test_the_checks_see_every_workload() -> None:
    """The policy has something to check: four Deployments, probes and all."""
    objects = render(CHART, DEFAULT)
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    assert deployments == {f"checkout-{c}" for c in ("server", "envoy", "relay", "runner")}
    assert {o["kind"] for o in objects} >= {
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Service",
        "ConfigMap",
    }


@pytest.mark.timeout(30)
def test_only_envoy_reaches_the_servers_grpc_port() -> None:
    objects = render(CHART, DEFAULT)
    policy = next(
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("server")
    )
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    components = {
        port: [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in peers]
        for port, peers in by_port.items()
    }
    assert components == {"grpc": ["envoy"], "wake": ["relay", "server"]}  # no metrics: nobody


@pytest.mark.timeout(30)
def test_a_missing_network_policy_fails_the_policy(tmp_path: Path) -> None:
    def no_policies(text: str) -> str:
        values = yaml.safe_load(text)
        values["networkPolicy"]["enabled"] = False
        return yaml.safe_dump(values)

    chart = broken_copy(tmp_path, "values.yaml", no_policies)
    assert policy_problems(render(chart, DEFAULT)) == [
        f"Deployment/checkout-{c}: no NetworkPolicy limits what reaches its pods"
        for c in ("envoy", "relay", "runner", "server")
    ]


@pytest.mark.timeout(30)
def test_a_missing_limit_fails_the_policy(tmp_path: Path) -> None:
    def drop_runner_limits(text: str) -> str:
        values = yaml.safe_load(text)
        del values["runner"]["resources"]["limits"]
        return yaml.safe_dump(values)

    chart = broken_copy(tmp_path, "values.yaml", drop_runner_limits)
    problems = policy_problems(render(chart, DEFAULT))
    assert problems == [
        "Deployment/checkout-runner: container runner: no cpu limit",
        "Deployment/checkout-runner: container runner: no memory limit",
    ]


@pytest.mark.timeout(30)
def test_a_privileged_container_fails_the_policy(tmp_path: Path) -> None:
    chart = broken_copy(
        tmp_path, "templates/_helpers.tpl", replace_once("privileged: false", "privileged: true")
    )
    objects = render(chart, DEFAULT)
    assert schema_problems(objects) == []  # a valid field: only the policy refuses it
    assert set(policy_problems(objects)) == {
        f"Deployment/checkout-{c}: container {c}: privileged"
        for c in ("server", "envoy", "relay", "runner")
    }


@pytest.mark.timeout(30)
def test_a_wrong_probe_port_fails_the_policy(tmp_path: Path) -> None:
    chart = broken_copy(
        tmp_path,
        "templates/relay.yaml",
        replace_once(
            "readinessProbe:\n            grpc: { port: {{ $v.healthPort }} }",
            "readinessProbe:\n            grpc: { port: 50053 }",
        ),
    )
    assert policy_problems(render(chart, DEFAULT)) == [
        "Deployment/checkout-relay: container relay: readinessProbe port 50053 is not a "
        "declared TCP port of the container"
    ]


@pytest.mark.timeout(30)
def test_a_wrong_exec_probe_port_fails_the_policy(tmp_path: Path) -> None:
    """The server's probes run files/grpc_health_probe.py: its --address port counts."""
    chart = broken_copy(
        tmp_path,
        "templates/server.yaml",
        replace_once(
            '"127.0.0.1:{{ $v.grpcPort }}", --server-name, {{ .Values.tls.serverName | quote }}, '
            "--any-answer",
            '"127.0.0.1:50061", --server-name, {{ .Values.tls.serverName | quote }}, --any-answer',
        ),
    )
    assert policy_problems(render(chart, DEFAULT)) == [
        "Deployment/checkout-server: container server: livenessProbe port 50061 is not a "
        "declared TCP port of the container"
    ]


@pytest.mark.timeout(30)
def test_an_invalid_field_fails_the_schema(tmp_path: Path) -> None:
    chart = broken_copy(
        tmp_path,
        "templates/runner.yaml",
        replace_once("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:"),
    )
    problems = schema_problems(render(chart, DEFAULT))
    assert len(problems) == 1
    assert problems[0].startswith("Deployment/checkout-runner: schema 1.33.0: spec.template.spec:")
    assert "'terminationGracePeriodSecond' was unexpected" in problems[0]


@pytest.mark.timeout(30)
def test_a_wrong_type_fails_the_schema(tmp_path: Path) -> None:
    chart = broken_copy(
        tmp_path,
        "templates/autoscaling.yaml",
        replace_once(
            "minReplicas: {{ $v.autoscaling.minReplicas }}",
            "minReplicas: {{ $v.autoscaling.minReplicas | quote }}",
        ),
    )
    problems = schema_problems(render(chart, DEFAULT))
    assert len(problems) == 3, problems  # the servers', Envoy's and the runners'
    assert all(p.startswith("HorizontalPodAutoscaler/") for p in problems)
    assert all(re.search(r"spec.minReplicas: '\d+' is not of type 'integer'", p) for p in problems)


@pytest.mark.timeout(30)
def test_a_short_grace_period_fails_the_policy(tmp_path: Path) -> None:
    def short_margin(text: str) -> str:
        values = yaml.safe_load(text)
        values["server"]["shutdown"]["marginS"] = -10
        return yaml.safe_dump(values)

    chart = broken_copy(tmp_path, "values.yaml", short_margin)
    assert policy_problems(render(chart, DEFAULT)) == [
        "Deployment/checkout-server: container server: terminationGracePeriodSeconds 27 <= "
        "preStop + drain + grace (37)"
    ]


@pytest.mark.timeout(30)
def test_helm_lint_fails_on_a_broken_chart(tmp_path: Path) -> None:
    chart = broken_copy(tmp_path, "Chart.yaml", replace_once("version: 0.1.0\n", ""))
    problems = lint_problems(chart, DEFAULT)
    assert any("version is required" in p for p in problems), problems


@pytest.mark.timeout(30)
def test_the_envoy_config_is_the_templates_rendering(tmp_path: Path) -> None:
    assert helm_envoy.is_current()
    stale = tmp_path / "envoy.yaml"
    stale.write_text(helm_envoy.ENVOY_CONFIG.read_text().replace("interval: 2s", "interval: 5s"))
    assert not helm_envoy.is_current(stale)


@pytest.mark.timeout(60)
def test_envoy_accepts_the_config_the_chart_fills_in(tmp_path: Path) -> None:
    """The ConfigMap's config (production values: a real host name, the servers' Service) with
    the mounted files put where this machine has them, through `envoy --mode validate`."""
    production = ValuesSet("production", (CHART / "values-production.yaml",))
    config_map = next(
        o
        for o in render(CHART, production)
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "checkout-envoy"
    )
    text = config_map["data"]["envoy.yaml"]
    assert 'domains: ["checkout.example.com", "checkout.example.com:*"]' in text
    assert "checkout-server-headless.checkout.svc.cluster.local, port_value: 50051" in text
    assert "helm-marker" not in text
    certs = tmp_path / "tls"
    make_compose_certs(certs)
    for mounted, local in {
        "/etc/envoy-tls/listener/tls.crt": certs / "envoy.pem",
        "/etc/envoy-tls/listener/tls.key": certs / "envoy.key",
        "/etc/envoy-tls/upstream/ca.crt": certs / "ca.pem",
        "/etc/envoy-tls/upstream/tls.crt": certs / "client.pem",
        "/etc/envoy-tls/upstream/tls.key": certs / "client.key",
        str(helm_envoy.DESCRIPTOR): DESCRIPTOR,
        str(helm_envoy.OPENAPI): OPENAPI,
        str(helm_envoy.CONSOLE): CONSOLE,
    }.items():
        assert mounted in text
        text = text.replace(mounted, str(local))
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    validate_envoy_config(config, cwd=REPO_ROOT)


# --- the server's probe: files/grpc_health_probe.py over mTLS --------------------------------


@asynccontextmanager
async def health_server(certs: Path) -> AsyncIterator[tuple[int, HealthReporter]]:
    """A gRPC health service over mTLS with make_dev_certs' server certificate."""
    credentials = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    servicer = new_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port, servicer
    finally:
        await server.stop(0)


def run_probe(certs: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(PROBE),
            "--address",
            f"127.0.0.1:{port}",
            "--ca",
            str(certs / "ca.pem"),
            "--cert",
            str(certs / "client.pem"),
            "--key",
            str(certs / "client.key"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.timeout(60)
async def test_the_server_probe_tells_ready_from_alive(tmp_path: Path) -> None:
    certs = tmp_path / "tls"
    make_compose_certs(certs)
    async with health_server(certs) as (port, servicer):
        ready = await asyncio.to_thread(run_probe, certs, port)
        assert ready.returncode == 0, ready.stderr
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        unready = await asyncio.to_thread(run_probe, certs, port)
        assert (unready.returncode, unready.stderr.strip()) == (1, "health: NOT_SERVING")
        alive = await asyncio.to_thread(run_probe, certs, port, "--any-answer")
        assert alive.returncode == 0, alive.stderr
    gone = await asyncio.to_thread(run_probe, certs, free_port(), "--any-answer")
    assert (gone.returncode, gone.stderr.strip()) == (1, "health check failed: UNAVAILABLE")
