"""The relay's metrics, and a small Prometheus text endpoint (`GET /metrics`) for them.

Plain counters and gauges: the relay is one process with one event loop, so nothing needs
locking, and the exposition format is a few lines (no extra dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class RelayMetrics:
    published_total: int = 0  # events acknowledged by Kafka and marked sent
    failures_total: int = 0  # events marked failed (non-retriable)
    retries_total: int = 0  # events rescheduled after a transient failure
    publish_errors_total: int = 0  # batches that failed transiently
    producer_restarts_total: int = 0  # Kafka producers discarded and recreated
    leases_lost_total: int = 0
    swept_total: int = 0  # old sent events deleted
    shards_held: int = 0
    oldest_unsent_age_s: float = 0.0  # the relay's lag (0 when nothing waits)
    # Failed rounds per background loop (the supervisor's count, shared by reference).
    loop_failures: Counter[str] = field(default_factory=Counter)

    def render(self) -> str:
        rows = [
            ("published_total", "counter", "Events acknowledged by Kafka and marked sent."),
            ("failures_total", "counter", "Events marked failed by a non-retriable error."),
            ("retries_total", "counter", "Events rescheduled after a transient error."),
            ("publish_errors_total", "counter", "Batches that failed transiently."),
            ("producer_restarts_total", "counter", "Kafka producers recreated."),
            ("leases_lost_total", "counter", "Shard leases lost or run out."),
            ("swept_total", "counter", "Old sent events deleted."),
            ("shards_held", "gauge", "Shards this relay holds."),
            ("oldest_unsent_age_s", "gauge", "Age in seconds of the oldest unsent event."),
        ]
        lines: list[str] = []
        for name, kind, text in rows:
            full = f"checkout_relay_{name}"
            lines += [
                f"# HELP {full} {text}",
                f"# TYPE {full} {kind}",
                f"{full} {getattr(self, name)}",
            ]
        full = "checkout_relay_loop_failures_total"
        lines += [
            f"# HELP {full} Rounds of a background loop that raised (then retried).",
            f"# TYPE {full} counter",
        ]
        lines += [f'{full}{{loop="{n}"}} {c}' for n, c in sorted(self.loop_failures.items())]
        return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves `metrics.render()` over HTTP/1.0 on `host:port` (port 0 picks one)."""

    def __init__(self, metrics: RelayMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                status, body = "200 OK", self._metrics.render().encode()
            else:
                status, body = "404 Not Found", b"not found\n"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
