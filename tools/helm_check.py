"""Validate the Helm chart (deploy/helm/checkout) offline, as `make lint` does:

    python tools/helm_check.py [CHART]

For the default values and for values-production.yaml, in turn:
1. `helm lint --strict`;
2. `helm template`, for Kubernetes KUBERNETES_VERSION;
3. every rendered object against that version's OpenAPI schemas (kubernetes-validate, strict:
   a field the schema does not know is an error); the kinds of CRDs (KEDA, the Prometheus
   Operator), whose schemas it does not carry, are checked by the policy below only;
4. the policy (`policy_problems`): every pod meets the restricted Pod Security profile with a
   read-only root file system, every container has requests and limits, every long-running
   container has startup, readiness and liveness probes on a port it declares, the server's
   grace period covers its drain, and every workload has a PodDisruptionBudget, an ingress
   NetworkPolicy, a spread, and autoscalers that name it.
Prints each problem and exits 1 if there is any. tests/integration/test_helm.py breaks copies
of the chart to show each check fail.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from devstack import tool_path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "deploy" / "helm" / "checkout"
KUBERNETES_VERSION = "1.33.0"
RELEASE = "checkout"
NAMESPACE = "checkout"

# Kinds whose schemas are not Kubernetes' own (CRDs): not schema-checked.
CRD_API_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# The volume types the restricted profile allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

Object = Mapping[str, Any]


@dataclass(frozen=True)
class ValuesSet:
    """A set of values files the chart is rendered with (on top of its values.yaml)."""

    name: str
    files: tuple[Path, ...]


def values_sets(chart: Path) -> tuple[ValuesSet, ...]:
    return (
        ValuesSet("default", ()),
        ValuesSet("production", (chart / "values-production.yaml",)),
    )


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool_path("helm")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _values_args(values: ValuesSet) -> list[str]:
    return [arg for path in values.files for arg in ("--values", str(path))]


def lint_problems(chart: Path, values: ValuesSet) -> list[str]:
    """`helm lint --strict` (warnings are errors too)."""
    done = _helm("lint", "--strict", str(chart), *_values_args(values))
    if done.returncode == 0:
        return []
    return [f"helm lint: {line}" for line in (done.stdout + done.stderr).splitlines() if line]


def render(chart: Path, values: ValuesSet) -> list[dict[str, Any]]:
    """The chart's objects as `helm template` renders them; RuntimeError when it fails."""
    done = _helm(
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBERNETES_VERSION,
        *_values_args(values),
    )
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def name_of(obj: Object) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def is_crd_kind(obj: Object) -> bool:
    return str(obj.get("apiVersion", "")).startswith(CRD_API_GROUPS)


def schema_problems(objects: Sequence[Object], version: str = KUBERNETES_VERSION) -> list[str]:
    """Each object against Kubernetes `version`'s schemas, strictly (unknown fields fail)."""
    with warnings.catch_warnings():
        # kubernetes-validate's imports warn on newer Pythons; not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        import kubernetes_validate  # type: ignore[import-untyped]  # it has no py.typed

    problems: list[str] = []
    for obj in objects:
        if is_crd_kind(obj):
            continue
        try:
            kubernetes_validate.validate(dict(obj), version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"{name_of(obj)}: schema {version}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name_of(obj)}: no schema in Kubernetes {version}: {error}")
    return problems


# --- the policy ------------------------------------------------------------------------------


def pod_spec(obj: Object) -> Mapping[str, Any] | None:
    """The pod spec of a Pod or of a workload's pod template; None for other kinds."""
    spec: Mapping[str, Any] | None = None
    if obj.get("kind") == "Pod":
        spec = obj.get("spec", {})
    elif obj.get("kind") in POD_TEMPLATE_KINDS:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    elif obj.get("kind") == "CronJob":
        job = obj.get("spec", {}).get("jobTemplate", {}).get("spec", {})
        spec = job.get("template", {}).get("spec", {})
    return spec


def containers(spec: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """Every container of a pod with whether it runs for the pod's life (the containers, and
    init containers with restartPolicy Always: sidecars)."""
    for container in spec.get("containers", []):
        yield container, True
    for container in spec.get("initContainers", []):
        yield container, container.get("restartPolicy") == "Always"


def _restricted_pod(spec: Mapping[str, Any]) -> list[str]:
    problems = [
        f"{field} is on" for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)
    ]
    pod_sc = spec.get("securityContext", {})
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0 (root)")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume.get('name')}: {sorted(kinds)} not allowed")
    return problems


def _restricted_container(container: Mapping[str, Any], pod_sc: Mapping[str, Any]) -> list[str]:
    sc = container.get("securityContext", {})
    problems = []
    if sc.get("privileged"):
        problems.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    capabilities = sc.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        problems.append("capabilities do not drop ALL")
    if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
        problems.append(f"capabilities add {capabilities['add']}")
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        problems.append("runAsNonRoot is not true")
    if sc.get("runAsUser") == 0:
        problems.append("runAsUser is 0 (root)")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
    if seccomp not in SECCOMP_TYPES:
        problems.append(f"seccompProfile {seccomp!r} is not RuntimeDefault or Localhost")
    for port in container.get("ports", []):
        if port.get("hostPort"):
            problems.append(f"hostPort {port['hostPort']}")
    return problems


def _resources(container: Mapping[str, Any]) -> list[str]:
    resources = container.get("resources", {})
    return [
        f"no {resource} {kind[:-1]}"
        for kind in ("requests", "limits")
        for resource in ("cpu", "memory")
        if resource not in (resources.get(kind) or {})
    ]


def probe_port(probe: Mapping[str, Any]) -> int | str | None:
    """The port a probe reaches: grpc, httpGet and tcpSocket name it; an exec probe of
    files/grpc_health_probe.py gives it as `--address HOST:PORT`."""
    for kind in ("grpc", "httpGet", "tcpSocket"):
        if kind in probe:
            port: int | str | None = probe[kind].get("port")
            return port
    command = probe.get("exec", {}).get("command", [])
    if "--address" in command[:-1]:
        address = str(command[command.index("--address") + 1])
        _, _, port_text = address.rpartition(":")
        return int(port_text) if port_text.isdigit() else port_text
    return None


def _probes(container: Mapping[str, Any]) -> list[str]:
    declared = container.get("ports", [])
    problems = []
    for kind in PROBES:
        probe = container.get(kind)
        if probe is None:
            problems.append(f"no {kind}")
            continue
        port = probe_port(probe)
        if port is None:
            problems.append(f"{kind} names no port")
            continue
        # A probe connects over TCP: it must reach one of the container's TCP ports.
        tcp = [p for p in declared if p.get("protocol", "TCP") == "TCP"]
        if not any(port in (p.get("containerPort"), p.get("name")) for p in tcp):
            problems.append(f"{kind} port {port} is not a declared TCP port of the container")
    return problems


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def _shutdown(spec: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """A server's pod must outlast its preStop sleep, drain and grace (SHUTDOWN_*_S)."""
    env = _env(container)
    if "SHUTDOWN_GRACE_S" not in env:
        return []
    sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    if sleep is None:
        return ["no preStop sleep before the server's drain"]
    needed = float(sleep) + float(env.get("SHUTDOWN_DRAIN_S", "2")) + float(env["SHUTDOWN_GRACE_S"])
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= needed:
        return [f"terminationGracePeriodSeconds {grace} <= preStop + drain + grace ({needed:g})"]
    return []


def pod_problems(spec: Mapping[str, Any]) -> list[str]:
    """The policy for one pod spec."""
    problems = _restricted_pod(spec)
    pod_sc = spec.get("securityContext", {})
    for container, long_running in containers(spec):
        found = _restricted_container(container, pod_sc) + _resources(container)
        if long_running:
            found += _probes(container) + _shutdown(spec, container)
        problems += [f"container {container.get('name')}: {p}" for p in found]
    return problems


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def _workload_problems(obj: Object, objects: Sequence[Object]) -> list[str]:
    """A Deployment: a PDB and a NetworkPolicy select its pods, its pods spread, and an
    autoscaler, if any, owns its replica count."""
    template = obj.get("spec", {}).get("template", {})
    labels = template.get("metadata", {}).get("labels", {})
    name = obj["metadata"]["name"]
    problems = []
    pdbs = [o for o in objects if o.get("kind") == "PodDisruptionBudget"]
    if not any(_selects(p.get("spec", {}).get("selector", {}), labels) for p in pdbs):
        problems.append("no PodDisruptionBudget selects its pods")
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    if not any(
        _selects(n.get("spec", {}).get("podSelector", {}), labels)
        and "Ingress" in n.get("spec", {}).get("policyTypes", [])
        for n in policies
    ):
        problems.append("no NetworkPolicy limits what reaches its pods")
    if not template.get("spec", {}).get("topologySpreadConstraints"):
        problems.append("no topologySpreadConstraints")
    scaled = any(
        o.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")
        and o.get("spec", {}).get("scaleTargetRef", {}).get("name") == name
        for o in objects
    )
    if scaled and "replicas" in obj.get("spec", {}):
        problems.append("sets replicas while an autoscaler scales it")
    return problems


def _scaler_problems(obj: Object, objects: Sequence[Object]) -> list[str]:
    target = obj.get("spec", {}).get("scaleTargetRef", {}).get("name")
    deployments = {o["metadata"]["name"] for o in objects if o.get("kind") == "Deployment"}
    return [] if target in deployments else [f"scales {target!r}, which is not rendered"]


def policy_problems(objects: Sequence[Object]) -> list[str]:
    """The policy for every rendered object."""
    problems = []
    for obj in objects:
        found: list[str] = []
        spec = pod_spec(obj)
        if spec is not None:
            found += pod_problems(spec)
        if obj.get("kind") == "Deployment":
            found += _workload_problems(obj, objects)
        if obj.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject"):
            found += _scaler_problems(obj, objects)
        problems += [f"{name_of(obj)}: {p}" for p in found]
    return problems


def check_chart(chart: Path = CHART) -> list[str]:
    """Every check for every values set; the problems, each prefixed with its values set."""
    problems: list[str] = []
    for values in values_sets(chart):
        found = lint_problems(chart, values)
        try:
            objects = render(chart, values)
        except RuntimeError as error:
            found.append(str(error))
        else:
            found += schema_problems(objects) + policy_problems(objects)
        problems += [f"[{values.name}] {p}" for p in found]
    return problems


def main(argv: Sequence[str]) -> int:
    chart = Path(argv[0]) if argv else CHART
    problems = check_chart(chart)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"helm chart ok: lint, templates and Kubernetes {KUBERNETES_VERSION} schemas, policy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
