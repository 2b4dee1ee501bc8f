"""Toxiproxy (Shopify's TCP fault proxy) as a ServerProcess, and a small typed client of its
HTTP API.

A proxy listens on one port and forwards every connection to its upstream; toxics added to
it change the bytes in flight (latency, a slow link, a cut after some bytes, a reset) and
disabling it refuses and drops every connection, as if the upstream were down. The API is
described in toxiproxy's README ("HTTP API"); every call here is one request to it.

    server = Toxiproxy(port=free_port())
    server.start()
    api = server.client()
    mongo = api.create_proxy("mongo", upstream=f"127.0.0.1:{ferretdb.port}")
    api.add_toxic("mongo", latency(200, jitter_ms=50))
    api.remove_toxic("mongo", "latency_downstream")
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._install import tool_path
from ._process import ServerError, ServerProcess, http_status

Stream = Literal["upstream", "downstream"]


class ToxiproxyError(RuntimeError):
    """The API refused a request (its status and message) or could not be reached."""


@dataclass(frozen=True)
class Toxic:
    """One toxic: `type` with its `attributes`, on one direction of every connection
    (`upstream`: client to server, `downstream`: server to client), applied to a connection
    with probability `toxicity`. `name` defaults to `<type>_<stream>`, as toxiproxy's does."""

    type: str
    attributes: Mapping[str, int] = field(default_factory=dict)
    stream: Stream = "downstream"
    toxicity: float = 1.0
    name: str = ""

    @property
    def key(self) -> str:
        return self.name or f"{self.type}_{self.stream}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.key,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


def latency(latency_ms: int, *, jitter_ms: int = 0, stream: Stream = "downstream") -> Toxic:
    """Every piece of data waits `latency_ms` ± `jitter_ms` before it is passed on."""
    return Toxic("latency", {"latency": latency_ms, "jitter": jitter_ms}, stream)


def bandwidth(rate_kb_s: int, *, stream: Stream = "downstream") -> Toxic:
    """At most `rate_kb_s` kilobytes per second on each connection: a slow link."""
    return Toxic("bandwidth", {"rate": rate_kb_s}, stream)


def reset_peer(timeout_ms: int = 0, *, stream: Stream = "downstream") -> Toxic:
    """Each connection is reset (TCP RST), at once or after `timeout_ms`."""
    return Toxic("reset_peer", {"timeout": timeout_ms}, stream)


def limit_data(limit_bytes: int, *, stream: Stream = "upstream") -> Toxic:
    """Each connection is closed once `limit_bytes` have passed in this direction: a cut in
    the middle of a stream."""
    return Toxic("limit_data", {"bytes": limit_bytes}, stream)


def timeout(timeout_ms: int = 0, *, stream: Stream = "downstream") -> Toxic:
    """Nothing passes any more; each connection is closed after `timeout_ms` (0: never,
    the data is dropped until the toxic is removed): a black hole."""
    return Toxic("timeout", {"timeout": timeout_ms}, stream)


@dataclass(frozen=True)
class Proxy:
    """A proxy as the API reports it (`listen` is the bound address, its port chosen by the
    server when asked for port 0)."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[str, ...] = ()

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Proxy:
        return cls(
            name=str(data["name"]),
            listen=str(data["listen"]),
            upstream=str(data["upstream"]),
            enabled=bool(data["enabled"]),
            toxics=tuple(str(t["name"]) for t in data.get("toxics") or ()),
        )


class ToxiproxyClient:
    """Blocking calls to a toxiproxy server's HTTP API (loopback: each takes about a
    millisecond; from asyncio code call them through `asyncio.to_thread`)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        # no proxies: toxiproxy is on loopback, whatever http_proxy says
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise ToxiproxyError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except OSError as exc:
            raise ToxiproxyError(f"{method} {path}: {exc}") from exc
        return json.loads(raw) if raw else None

    def version(self) -> str:
        request = urllib.request.Request(self.url + "/version")
        with self._opener.open(request, timeout=self.timeout_s) as response:
            return bytes(response.read()).decode().strip()

    def create_proxy(self, name: str, *, upstream: str, listen: str = "127.0.0.1:0") -> Proxy:
        """A new, enabled proxy from `listen` (port 0: a free one, see `Proxy.port`) to
        `upstream`."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        return Proxy.from_json(self._call("POST", "/proxies", body))

    def proxy(self, name: str) -> Proxy:
        return Proxy.from_json(self._call("GET", f"/proxies/{name}"))

    def proxies(self) -> list[Proxy]:
        listed: Mapping[str, Any] = self._call("GET", "/proxies")
        return [Proxy.from_json(p) for p in listed.values()]

    def set_enabled(self, name: str, enabled: bool) -> Proxy:
        """Disable (stop listening and drop every connection) or enable a proxy again."""
        return Proxy.from_json(self._call("POST", f"/proxies/{name}", {"enabled": enabled}))

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")

    def add_toxic(self, proxy: str, toxic: Toxic) -> str:
        """Add `toxic` to every connection of `proxy`, open or new; returns its name."""
        created: Mapping[str, Any] = self._call("POST", f"/proxies/{proxy}/toxics", toxic.as_json())
        return str(created["name"])

    def toxics(self, proxy: str) -> list[str]:
        listed: Sequence[Mapping[str, Any]] = self._call("GET", f"/proxies/{proxy}/toxics")
        return [str(t["name"]) for t in listed]

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")


class Toxiproxy(ServerProcess):
    """A toxiproxy server whose API listens on 127.0.0.1:`port`; its proxies (made through
    `client()`) live as long as the process does."""

    def __init__(self, *, port: int, log_path: Path | None = None) -> None:
        super().__init__(name="toxiproxy", port=port, log_path=log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> ToxiproxyClient:
        return ToxiproxyClient(self.url)

    def _command(self) -> Sequence[str]:
        binary = tool_path("toxiproxy-server")
        if not binary.is_file():
            raise ServerError(f"{binary} is missing: run `python -m devstack install`")
        return [str(binary), "-host", "127.0.0.1", "-port", str(self.port)]

    def _probe(self) -> bool:
        return http_status(f"{self.url}/version") == 200
