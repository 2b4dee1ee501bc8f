"""`GET /metrics` of a process's Prometheus registry (the server's and the relay's alike),
with prometheus-client's HTTP server: a thread of its own, so a scrape never waits on the
event loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..adapters.kafka_status import KafkaStatusFeed
from ..adapters.udp_wake import WakeSigner

log = logging.getLogger(__name__)


class MetricsEndpoint:
    """`GET /metrics` of `registry` on `addr` (host:port; port 0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, addr: str) -> None:
        self._registry = registry
        host, _, port = addr.rpartition(":")
        self._host = host or "0.0.0.0"
        self._port = int(port)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port if self._server is None else int(self._server.server_port)

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self._registry
        )
        log.info("metrics", extra={"metrics_port": self.port})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None


class WakeUpCollector(Collector):
    """`<prefix>_wake_ups_refused_total`: datagrams on the wake-up port that were not wake-ups
    signed with WAKE_SECRET within 30 s (spoofed, replayed late, or from a process with
    another secret)."""

    def __init__(self, signer: WakeSigner, prefix: str) -> None:
        self._signer = signer
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            f"{self._prefix}_wake_ups_refused",
            "Datagrams on the wake-up port dropped: not signed with WAKE_SECRET, or not within "
            "30 s of this process's clock.",
            value=self._signer.refused_total,
        )


class StatusFeedCollector(Collector):
    """What the server's reader of STATUS_TOPIC dropped: `checkout_status_changes_refused_total`
    (status changes not signed with WAKE_SECRET: a writer of the topic without it, such as
    the runner's Kafka user) and `checkout_status_records_skipped_total` (records of a kind or
    version this server does not know)."""

    def __init__(self, feed: KafkaStatusFeed) -> None:
        self._feed = feed

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "checkout_status_changes_refused",
            "Status changes read from STATUS_TOPIC and dropped: not signed with WAKE_SECRET.",
            value=self._feed.refused,
        )
        yield CounterMetricFamily(
            "checkout_status_records_skipped",
            "Records read from STATUS_TOPIC of a kind or version this server does not know.",
            value=self._feed.skipped,
        )
