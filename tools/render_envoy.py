"""Render the Envoy config from deploy/envoy/envoy.template.yaml (one template for local runs,
tests and the docker compose image). Standard library only: it also runs in the image build.

    python tools/render_envoy.py OUT --listen-port 8080 --admin-port 9901 \
        --upstream-host checkout --upstream-port 50051 --descriptor /etc/envoy/checkout.pb \
        --openapi /etc/envoy/openapi.yaml [--console DIR] \
        [--upstream HOST:PORT ...] [--host NAME ...] [--budget NAME=N ...] \
        [--listen-tls-cert FILE --listen-tls-key FILE] \
        [--upstream-tls-ca FILE [--upstream-sni NAME] \
         [--upstream-tls-cert FILE --upstream-tls-key FILE]]

The servers are one upstream (`--upstream-host`, resolved by DNS: every address of the name
is a server, as docker compose gives a scaled service) or a list (`--upstream HOST:PORT`, once
per server, instead). Envoy balances them round robin, health-checks them (gRPC health) and
retries reads (never uploads) on another server; the template says how.

Envoy answers only requests for `--host` names (any port; by default localhost and
127.0.0.1), and refuses others with 421. What one kind of call may hold at once, and what one
client connection may ask, are the `Budgets` below (`--budget NAME=N` changes one).

Without the TLS options Envoy serves plaintext and talks plaintext (HTTP/2 cleartext) to the
server. The files are read by Envoy when it starts, not here: in the image they are the
paths where docker compose mounts its secrets.

The template is YAML with `${NAME}` placeholders (string.Template) and two kinds of lines
for this script only: `## ...` notes, never rendered, and `#if NAME` ... `#endif` around a
section that is rendered only when NAME (a key of SECTIONS) is on.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "envoy" / "envoy.template.yaml"

# The template's optional sections.
SECTIONS = ("LISTEN_TLS", "UPSTREAM_TLS", "UPSTREAM_CLIENT_CERT", "CONSOLE")

_IF = re.compile(r"^\s*#if (\w+)\s*$")
_ENDIF = re.compile(r"^\s*#endif\s*$")
_NOTE = re.compile(r"^\s*##")


@dataclass(frozen=True)
class ListenerTls:
    """TLS on Envoy's listener: its certificate chain and private key (PEM files)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class UpstreamTls:
    """TLS from Envoy to the server. `ca` is the PEM file of the CA(s) the server's
    certificate must chain to; `sni` the DNS name sent as SNI, which the certificate's
    subject alternative names must contain. `cert` and `key` (both or neither) are Envoy's
    client certificate, for a server that requires mTLS."""

    ca: Path
    sni: str
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("the upstream client certificate needs both its cert and its key")
        if not self.sni:
            raise ValueError("upstream TLS needs the server's name (SNI)")
        try:
            ipaddress.ip_address(self.sni)
        except ValueError:
            return
        raise ValueError(
            f"upstream SNI {self.sni!r} is an IP address: give the DNS name in the server's "
            "certificate (--upstream-sni)"
        )


@dataclass(frozen=True)
class Budgets:
    """What Envoy lets through at once (docs/operations.md, "Envoy's budgets"). The
    requests budgets are each cluster's circuit breakers, across all servers: a call over
    its kind's budget is refused at once (503, gRPC UNAVAILABLE) while the other kinds go on.
    """

    unary_requests: int = 512
    """The API's unary calls in flight (cluster `checkout_grpc`; REST /api/health too). Each
    takes milliseconds: 512 is far more than the servers' database pools serve at once, and
    only a flood reaches it."""
    upload_requests: int = 128
    """Upload streams: UploadVideo, WriteUpload, their REST forms (`checkout_uploads`). A
    server refuses its own 65th itself (UPLOAD_MAX_CONCURRENT, 64) with TOO_MANY_UPLOADS and
    a retry hint; Envoy's budget is the backstop above it: two servers' worth."""
    watch_requests: int = 4096
    """WatchStatus streams and the REST watches (`checkout_watches`). A server's
    WATCH_MAX_WATCHERS (4096): the servers refuse a client past its share
    (WATCH_MAX_WATCHERS_PER_CLIENT, 256) themselves, so this budget must not be a smaller pool
    that two keys' shares fill and every other watcher waits behind; it bounds what Envoy
    holds. With more servers, raise both."""
    download_requests: int = 64
    """Video downloads: GetVideo and REST /api/video/{id} (`checkout_downloads`). A server
    refuses its own 33rd itself (VIDEO_DOWNLOAD_MAX_CONCURRENT, 32) with TOO_MANY_DOWNLOADS
    and a retry hint, and a client past its share (VIDEO_DOWNLOAD_MAX_CONCURRENT_PER_CLIENT,
    4); Envoy's budget is the backstop above it: two servers' worth, on a pool of its own so
    that slow downloads never take the places of the API's unary calls."""
    public_requests: int = 32
    """What needs no API key (`checkout_public`): grpc.health.v1 Check and Watch, reflection,
    unknown paths. Small, so that anonymous Health/Watch streams cannot hold more. Envoy's
    own health checks of the servers and REST /api/health do not count here."""
    retries: int = 16
    """Retries in flight per cluster (Envoy's default is 3): reads retried on another
    server while one goes down."""
    streams_per_connection: int = 100
    """Concurrent HTTP/2 streams on one client connection: a client opening more waits for
    one to end (Envoy's edge recommendation)."""
    max_connections: int = 4096
    """Open client connections to Envoy in all (the overload manager): past it new ones
    wait in the kernel's queue until some close."""
    rate_per_s: int = 100
    """New requests per second on one client connection (the local rate limit's refill);
    past it REST gets 429 RATE_LIMITED, gRPC RESOURCE_EXHAUSTED."""
    rate_burst: int = 200
    """The rate limit's bucket: that many requests at once on a fresh connection."""
    max_heap_bytes: int = 1 << 30
    """Envoy's heap ceiling for the overload manager (1 GiB): at 90 % it returns free
    memory to the system, at 98 % it answers new requests 503 itself."""
    unary_timeout_s: int = 120
    """The longest a unary call of the API (all but the uploads, the watches, the downloads
    and Cleanup) waits for its answer: past it Envoy answers 504 UPSTREAM_TIMEOUT itself and
    frees the call's place in its budget, so a server that hangs cannot hold the budget."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"budget {name} must be at least 1, not {value}")

    def values(self) -> dict[str, str]:
        """The template's placeholders: each field's name in capitals."""
        return {name.upper(): str(value) for name, value in vars(self).items()}


def parse_budget(text: str) -> tuple[str, int]:
    """`NAME=N` (a field of Budgets) as (name, n)."""
    name, _, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if name not in Budgets.__dataclass_fields__ or not value.strip().isdigit():
        known = ", ".join(Budgets.__dataclass_fields__)
        raise ValueError(f"budget {text!r} is not NAME=N with NAME one of {known}")
    return name, int(value)


def domains(hosts: Sequence[str]) -> str:
    """The virtual host's `domains` for `hosts`: each name with and without a port, quoted
    for the template's flow sequence."""
    if not hosts:
        raise ValueError("the Envoy config needs at least one host name")
    for host in hosts:
        if not re.fullmatch(r"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]", host):
            raise ValueError(f"host {host!r} is not a DNS name, an IPv4 address or [IPv6]")
    return ", ".join(f'"{name}"' for host in hosts for name in (host, f"{host}:*"))


def render_template(text: str, on: set[str], values: dict[str, str]) -> str:
    """`text` without its notes and the sections that are not `on`, placeholders filled in
    from `values` (a placeholder without a value raises KeyError)."""
    unknown = on - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown template sections: {sorted(unknown)}")
    kept: list[str] = []
    open_sections: list[bool] = []  # one per enclosing #if: whether it is on
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if match := _IF.match(line):
            if match[1] not in SECTIONS:
                raise ValueError(f"template line {number}: unknown section {match[1]}")
            open_sections.append(match[1] in on)
        elif _ENDIF.match(line):
            if not open_sections:
                raise ValueError(f"template line {number}: #endif without #if")
            open_sections.pop()
        elif not _NOTE.match(line) and all(open_sections):
            kept.append(line)
    if open_sections:
        raise ValueError("template: #if without #endif")
    return string.Template("".join(kept)).substitute(values)


def endpoint_lines(upstreams: Sequence[tuple[str, int]]) -> str:
    """The cluster's `lb_endpoints` entries, one flow-style line per (host, port), joined for
    the template's placeholder (indented as it is)."""
    if not upstreams:
        raise ValueError("the Envoy config needs at least one upstream server")
    lines = [
        "- endpoint: { address: { socket_address: "
        f"{{ address: {host}, port_value: {port} }} }} }}"
        for host, port in upstreams
    ]
    return "\n        ".join(lines)


def parse_upstream(text: str) -> tuple[str, int]:
    """`HOST:PORT` as (host, port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"upstream {text!r} is not HOST:PORT")
    return host, int(port)


def render_envoy_config(
    out: Path,
    *,
    listen_port: int,
    admin_port: int,
    descriptor: Path,
    openapi: Path,
    upstream_port: int | None = None,
    upstream_host: str = "127.0.0.1",
    upstreams: Sequence[tuple[str, int]] = (),
    listen_address: str = "127.0.0.1",
    admin_address: str = "127.0.0.1",
    listener_tls: ListenerTls | None = None,
    upstream_tls: UpstreamTls | None = None,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    budgets: Budgets = Budgets(),
    console: Path | None = None,
) -> Path:
    """Write the rendered config to `out` and return it. The servers are `upstreams`, or
    the one at `upstream_host` and `upstream_port` (exactly one of the two is given);
    `hosts` the names Envoy answers for (with any port); `console` the folder of the built
    web console, served at `/` (none without it)."""
    if (upstream_port is None) == (not upstreams):
        raise ValueError("give either upstream_port (with upstream_host) or upstreams")
    servers = list(upstreams) if upstreams else [(upstream_host, upstream_port or 0)]
    on: set[str] = set()
    values: dict[str, str] = {
        "ADMIN_ADDRESS": admin_address,
        "ADMIN_PORT": str(admin_port),
        "LISTEN_ADDRESS": listen_address,
        "LISTEN_PORT": str(listen_port),
        "DESCRIPTOR": str(descriptor),
        "OPENAPI": str(openapi),
        "UPSTREAM_ENDPOINTS": endpoint_lines(servers),
        "UPSTREAM_TRANSPORT": "HTTP/2 cleartext",
        "DOMAINS": domains(hosts),
        "HOST_NAMES": ", ".join(hosts),
    } | budgets.values()
    if console is not None:
        on.add("CONSOLE")
        values["CONSOLE"] = str(console)
    if listener_tls is not None:
        on.add("LISTEN_TLS")
        values |= {
            "LISTEN_TLS_CERT": str(listener_tls.cert),
            "LISTEN_TLS_KEY": str(listener_tls.key),
        }
    if upstream_tls is not None:
        on.add("UPSTREAM_TLS")
        values |= {
            "UPSTREAM_TRANSPORT": "HTTP/2 with TLS",
            "UPSTREAM_TLS_CA": str(upstream_tls.ca),
            "UPSTREAM_SNI": upstream_tls.sni,
        }
        if upstream_tls.cert is not None and upstream_tls.key is not None:
            on.add("UPSTREAM_CLIENT_CERT")
            values |= {
                "UPSTREAM_TRANSPORT": "HTTP/2 with mTLS",
                "UPSTREAM_TLS_CERT": str(upstream_tls.cert),
                "UPSTREAM_TLS_KEY": str(upstream_tls.key),
            }
    text = render_template(TEMPLATE.read_text(), on, values)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--listen-address", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--admin-address", default="127.0.0.1")
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, default=50051)
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a server (once per server), instead of --upstream-host and --upstream-port",
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="host names clients reach Envoy by, any port (repeat, or separate names by "
        "commas; default: localhost and 127.0.0.1)",
    )
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="NAME=N",
        help="change one of the budgets (tools/render_envoy.py, Budgets), e.g. watch_requests=256",
    )
    parser.add_argument("--descriptor", type=Path, required=True)
    parser.add_argument("--openapi", type=Path, required=True)
    parser.add_argument(
        "--console", type=Path, help="the built web console's folder, served at / (optional)"
    )
    tls = parser.add_argument_group("TLS (each file is a PEM file Envoy reads at start-up)")
    tls.add_argument("--listen-tls-cert", type=Path, help="the listener's certificate chain")
    tls.add_argument("--listen-tls-key", type=Path, help="the listener's private key")
    tls.add_argument(
        "--upstream-tls-ca", type=Path, help="talk TLS to the server, trusting these CAs"
    )
    tls.add_argument(
        "--upstream-sni",
        help="the server's DNS name, sent as SNI and required in its certificate "
        "(default: --upstream-host)",
    )
    tls.add_argument("--upstream-tls-cert", type=Path, help="Envoy's client certificate (mTLS)")
    tls.add_argument("--upstream-tls-key", type=Path, help="its private key")
    args = parser.parse_args()

    listener_tls = None
    if args.listen_tls_cert or args.listen_tls_key:
        if not (args.listen_tls_cert and args.listen_tls_key):
            parser.error("--listen-tls-cert and --listen-tls-key go together")
        listener_tls = ListenerTls(cert=args.listen_tls_cert, key=args.listen_tls_key)
    upstream_tls = None
    if args.upstream_tls_ca:
        try:
            upstream_tls = UpstreamTls(
                ca=args.upstream_tls_ca,
                sni=args.upstream_sni or args.upstream_host,
                cert=args.upstream_tls_cert,
                key=args.upstream_tls_key,
            )
        except ValueError as exc:
            parser.error(str(exc))
    elif args.upstream_sni or args.upstream_tls_cert or args.upstream_tls_key:
        parser.error(
            "--upstream-sni, --upstream-tls-cert and --upstream-tls-key need --upstream-tls-ca"
        )

    try:
        upstreams = [parse_upstream(u) for u in args.upstream]
        budgets = Budgets(**dict(parse_budget(b) for b in args.budget))
    except ValueError as exc:
        parser.error(str(exc))
    render_envoy_config(
        args.out,
        listen_port=args.listen_port,
        listen_address=args.listen_address,
        admin_port=args.admin_port,
        admin_address=args.admin_address,
        upstream_host=args.upstream_host,
        upstream_port=None if upstreams else args.upstream_port,
        upstreams=upstreams,
        descriptor=args.descriptor,
        openapi=args.openapi,
        listener_tls=listener_tls,
        upstream_tls=upstream_tls,
        hosts=[name for h in args.host for name in h.split(",") if name.strip()]
        or ("localhost", "127.0.0.1"),
        budgets=budgets,
        console=args.console,
    )


if __name__ == "__main__":
    main()
