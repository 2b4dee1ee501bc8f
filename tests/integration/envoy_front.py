"""A real Envoy in front of checkout servers, with the config tools/render_envoy.py renders
(the stack's descriptor and OpenAPI document): what `make run` puts in front of the server,
on free ports, for one test or one module."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import Envoy, free_port
from devstack._paths import REPO_ROOT
from devstack._stack import CONSOLE, DESCRIPTOR, OPENAPI
from tests.helpers import has_cyrillic
from tools.render_envoy import Budgets, ListenerTls, UpstreamTls, render_envoy_config

START_TIMEOUT_S = 60
DEFAULT_BUDGETS = Budgets()  # what make run and compose render


@dataclass(frozen=True)
class Front:
    """A running Envoy: its listener, its admin port and the servers' ports behind it."""

    port: int
    admin_port: int
    upstreams: tuple[int, ...]
    tls: bool = False

    @property
    def url(self) -> str:
        """The listener's base URL; a TLS listener's certificate names localhost."""
        return f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


def _envoy(
    folder: Path,
    upstreams: Sequence[int],
    listener_tls: ListenerTls | None,
    upstream_tls: UpstreamTls | None,
    budgets: Budgets,
    concurrency: int = 2,
) -> tuple[Envoy, Front]:
    front = Front(free_port(), free_port(), tuple(upstreams), tls=listener_tls is not None)
    config = render_envoy_config(
        folder / "envoy.yaml",
        listen_port=front.port,
        admin_port=front.admin_port,
        upstreams=[("127.0.0.1", port) for port in upstreams],
        descriptor=DESCRIPTOR,
        openapi=OPENAPI,
        console=CONSOLE,
        listener_tls=listener_tls,
        upstream_tls=upstream_tls,
        budgets=budgets,
    )
    process = Envoy(
        config_path=config,
        admin_port=front.admin_port,
        cwd=REPO_ROOT,
        log_path=folder / "envoy.log",
        concurrency=concurrency,
    )
    return process, front


@contextmanager
def envoy_front(
    folder: Path,
    upstreams: Sequence[int],
    *,
    listener_tls: ListenerTls | None = None,
    upstream_tls: UpstreamTls | None = None,
    budgets: Budgets = DEFAULT_BUDGETS,
) -> Iterator[Front]:
    """Envoy in front of the servers on `upstreams` (ports on 127.0.0.1, served or not), its
    config and log in `folder`; ready (admin /ready) when entered, stopped on exit."""
    process, front = _envoy(folder, upstreams, listener_tls, upstream_tls, budgets)
    try:
        process.start(START_TIMEOUT_S)
        yield front
    finally:
        process.stop()


@asynccontextmanager
async def async_envoy_front(
    folder: Path,
    upstreams: Sequence[int],
    *,
    listener_tls: ListenerTls | None = None,
    upstream_tls: UpstreamTls | None = None,
    budgets: Budgets = DEFAULT_BUDGETS,
    concurrency: int = 2,
) -> AsyncIterator[Front]:
    """`envoy_front` for async tests: the blocking start and stop run off the event loop, so
    an in-process server on it keeps serving meanwhile. `concurrency` is Envoy's number of
    workers, each with its own connections to the servers."""
    process, front = _envoy(
        folder, upstreams, listener_tls, upstream_tls, budgets, concurrency=concurrency
    )
    try:
        await asyncio.to_thread(process.start, START_TIMEOUT_S)
        yield front
    finally:
        await asyncio.to_thread(process.stop)


def envoy_error(body: Any) -> tuple[int, str]:
    """(gRPC code, reason) of an error Envoy answered itself, checked for the service's one
    shape: a google.rpc.Status with a Russian message and one ErrorInfo that keeps Envoy's
    own detail."""
    assert set(body) == {"code", "message", "details"}, body
    assert has_cyrillic(body["message"]), body
    (info,) = body["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["domain"] == "checkout.v1"
    assert set(info["metadata"]) == {"envoy_message", "envoy_details"}
    return body["code"], info["reason"]
