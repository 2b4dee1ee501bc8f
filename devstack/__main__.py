"""CLI: ``python -m devstack {install,selfcheck,run,validate-envoy}``."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ._install import InstallError, install_all
from ._process import ServerError, ServerProcess, free_port
from ._servers import FerretDB, Kafka, MinIO
from ._toxiproxy import Toxiproxy


def _cmd_install(_args: argparse.Namespace) -> int:
    install_all()
    return 0


def _selfcheck_servers(tmp: Path) -> list[Callable[[], ServerProcess]]:
    return [
        lambda: FerretDB(
            port=free_port(), data_dir=tmp / "ferretdb", log_path=tmp / "ferretdb.log"
        ),
        lambda: MinIO(
            port=free_port(),
            console_port=free_port(),
            data_dir=tmp / "minio",
            log_path=tmp / "minio.log",
        ),
        lambda: Kafka(
            port=free_port(),
            controller_port=free_port(),
            data_dir=tmp / "kafka",
            log_path=tmp / "kafka.log",
        ),
        lambda: Toxiproxy(port=free_port(), log_path=tmp / "toxiproxy.log"),
    ]


def _cmd_selfcheck(args: argparse.Namespace) -> int:
    """Start each server on free ports under a temp dir, check readiness, stop, time it."""
    failures = 0
    with tempfile.TemporaryDirectory(prefix="devstack-selfcheck-") as tmp_name:
        for make in _selfcheck_servers(Path(tmp_name)):
            server = make()
            t0 = time.monotonic()
            try:
                server.start(timeout_s=args.timeout)
                ready_s = time.monotonic() - t0
                t1 = time.monotonic()
                server.stop()
                print(
                    f"{server.name:9s} ok   start-to-ready {ready_s:6.2f}s   "
                    f"stop {time.monotonic() - t1:5.2f}s   port {server.port}",
                    flush=True,
                )
            except ServerError as exc:
                failures += 1
                server.stop()
                print(f"{server.name:9s} FAIL {exc}", flush=True)
    print("selfcheck: " + ("all servers ok" if failures == 0 else f"{failures} server(s) failed"))
    return 1 if failures else 0


def _cmd_run(_args: argparse.Namespace) -> int:
    from ._stack import run_foreground  # imports grpc: only for this command

    return run_foreground()


def _cmd_validate_envoy(_args: argparse.Namespace) -> int:
    """Render the Envoy config as `run` would, with TLS on both sides as the compose image
    does (with fresh dev certificates), and with two servers as the soak does, and check each
    with `envoy --mode validate`."""
    from tools.make_dev_certs import make_compose_certs
    from tools.render_envoy import ListenerTls, UpstreamTls, render_envoy_config

    from ._envoy import validate_envoy_config
    from ._paths import REPO_ROOT
    from ._stack import CONSOLE, DESCRIPTOR, OPENAPI

    with tempfile.TemporaryDirectory(prefix="devstack-envoy-") as tmp:
        folder = Path(tmp)
        certs = folder / "tls"
        make_compose_certs(certs)
        plain = render_envoy_config(
            folder / "envoy.yaml",
            listen_port=8080,
            admin_port=9901,
            upstream_port=50051,
            descriptor=DESCRIPTOR,
            openapi=OPENAPI,
            console=CONSOLE,
        )
        validate_envoy_config(plain, cwd=REPO_ROOT)
        tls = render_envoy_config(
            folder / "envoy-tls.yaml",
            listen_port=8443,
            admin_port=9901,
            upstream_host="checkout",
            upstream_port=50051,
            descriptor=DESCRIPTOR,
            openapi=OPENAPI,
            console=CONSOLE,
            listener_tls=ListenerTls(cert=certs / "envoy.pem", key=certs / "envoy.key"),
            upstream_tls=UpstreamTls(  # as the image renders it: mTLS to the server
                ca=certs / "ca.pem",
                sni="checkout",
                cert=certs / "client.pem",
                key=certs / "client.key",
            ),
        )
        validate_envoy_config(tls, cwd=REPO_ROOT)
        # As the soak renders it: two servers in the cluster.
        pair = render_envoy_config(
            folder / "envoy-pair.yaml",
            listen_port=8080,
            admin_port=9901,
            upstreams=[("127.0.0.1", 50051), ("127.0.0.1", 50061)],
            descriptor=DESCRIPTOR,
            openapi=OPENAPI,
        )
        validate_envoy_config(pair, cwd=REPO_ROOT)
    print(
        "envoy config OK (plaintext and TLS on the listener with mTLS to the server, both"
        " serving the console; two servers)"
    )
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="install Go tools and Kafka jars (idempotent)")
    p_install.set_defaults(func=_cmd_install)
    p_check = sub.add_parser(
        "selfcheck", help="start/stop FerretDB, MinIO, Kafka, toxiproxy; timings"
    )
    p_check.add_argument("--timeout", type=float, default=90.0, help="readiness timeout (s)")
    p_check.set_defaults(func=_cmd_selfcheck)
    p_run = sub.add_parser("run", help="run the whole local stack in the foreground")
    p_run.set_defaults(func=_cmd_run)
    p_validate = sub.add_parser("validate-envoy", help="envoy --mode validate on our config")
    p_validate.set_defaults(func=_cmd_validate_envoy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InstallError as exc:
        print(f"devstack: install failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
