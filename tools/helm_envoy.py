"""The Envoy config of the Helm chart, deploy/helm/checkout/files/envoy.yaml, rendered from the
one template (deploy/envoy/envoy.template.yaml) by tools/render_envoy.py, so the chart's Envoy
is the Envoy of `make run`, the tests and docker compose.

    python tools/helm_envoy.py          # writes the file
    python tools/helm_envoy.py --check  # fails when it differs from a fresh rendering

What only the cluster knows (the servers' Service name, the public host names, the name in the
server's certificate) is rendered as a marker that the chart's template replaces
(templates/envoy-config.yaml); everything else is fixed here: the listener (HTTPS on 8443,
admin on the pod's loopback), the mount paths of the Secrets and the paths of the descriptor
set and OpenAPI document inside the Envoy image (deploy/Dockerfile, target envoy). `make lint`
and tests/integration/test_helm.py run the check.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from tools.render_envoy import (
    Budgets,
    ListenerTls,
    UpstreamTls,
    render_envoy_config,
)

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "checkout"
ENVOY_CONFIG = CHART / "files" / "envoy.yaml"

LISTEN_PORT = 8443
ADMIN_PORT = 9901
SERVER_PORT = 50051
# Markers the chart replaces (valid where they stand, so render_envoy accepts them).
UPSTREAM_HOST_MARKER = "checkout-servers.helm-marker.invalid"
PUBLIC_HOST_MARKER = "checkout-public-host.helm-marker.invalid"
SERVER_NAME_MARKER = "checkout-server-name.helm-marker.invalid"
# Where the chart mounts the Secrets in the Envoy container (templates/envoy.yaml).
LISTENER_TLS_DIR = Path("/etc/envoy-tls/listener")
UPSTREAM_TLS_DIR = Path("/etc/envoy-tls/upstream")
# In the Envoy image (deploy/Dockerfile).
DESCRIPTOR = Path("/etc/envoy/checkout.pb")
OPENAPI = Path("/etc/envoy/openapi.yaml")
CONSOLE = Path("/etc/envoy/console")  # the web console, built into the envoy image


def render(out: Path) -> Path:
    """Render the chart's Envoy config into `out`."""
    return render_envoy_config(
        out,
        listen_address="0.0.0.0",
        listen_port=LISTEN_PORT,
        admin_address="127.0.0.1",
        admin_port=ADMIN_PORT,
        upstream_host=UPSTREAM_HOST_MARKER,
        upstream_port=SERVER_PORT,
        descriptor=DESCRIPTOR,
        openapi=OPENAPI,
        console=CONSOLE,
        listener_tls=ListenerTls(
            cert=LISTENER_TLS_DIR / "tls.crt", key=LISTENER_TLS_DIR / "tls.key"
        ),
        upstream_tls=UpstreamTls(
            ca=UPSTREAM_TLS_DIR / "ca.crt",
            sni=SERVER_NAME_MARKER,
            cert=UPSTREAM_TLS_DIR / "tls.crt",
            key=UPSTREAM_TLS_DIR / "tls.key",
        ),
        hosts=(PUBLIC_HOST_MARKER,),
        budgets=Budgets(),
    )


def is_current(path: Path = ENVOY_CONFIG) -> bool:
    """Whether the chart's file (`path`) is what `render` writes now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = render(Path(tmp) / "envoy.yaml").read_text()
    return path.is_file() and path.read_text() == fresh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that it is current")
    args = parser.parse_args(argv)
    relative = ENVOY_CONFIG.relative_to(CHART.parent.parent.parent)
    if args.check:
        if is_current():
            return 0
        print(f"{relative} is stale: run `.venv/bin/python tools/helm_envoy.py`", file=sys.stderr)
        return 1
    render(ENVOY_CONFIG)
    print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
