"""Render the Envoy config from deploy/envoy/envoy.template.yaml (one template for local runs,
tests and the docker compose image). Standard library only: it also runs in the image build.

    python tools/render_envoy.py OUT --listen-port 8080 --admin-port 9901 \
        --upstream-host checkout --upstream-port 50051 --descriptor /etc/envoy/checkout.pb \
        --openapi /etc/envoy/openapi.yaml
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "envoy" / "envoy.template.yaml"


def render_envoy_config(
    out: Path,
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    descriptor: Path,
    openapi: Path,
    upstream_host: str = "127.0.0.1",
    listen_address: str = "127.0.0.1",
    admin_address: str = "127.0.0.1",
) -> Path:
    """Write the rendered config to `out` and return it."""
    text = string.Template(TEMPLATE.read_text()).substitute(
        ADMIN_ADDRESS=admin_address,
        ADMIN_PORT=admin_port,
        LISTEN_ADDRESS=listen_address,
        LISTEN_PORT=listen_port,
        DESCRIPTOR=str(descriptor),
        OPENAPI=str(openapi),
        UPSTREAM_HOST=upstream_host,
        UPSTREAM_PORT=upstream_port,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--listen-address", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--admin-address", default="127.0.0.1")
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, default=50051)
    parser.add_argument("--descriptor", type=Path, required=True)
    parser.add_argument("--openapi", type=Path, required=True)
    args = parser.parse_args()
    render_envoy_config(
        args.out,
        listen_port=args.listen_port,
        listen_address=args.listen_address,
        admin_port=args.admin_port,
        admin_address=args.admin_address,
        upstream_host=args.upstream_host,
        upstream_port=args.upstream_port,
        descriptor=args.descriptor,
        openapi=args.openapi,
    )


if __name__ == "__main__":
    main()
