"""The relay's metrics: plain counters and gauges that the relay sets (one process, one event
loop: nothing needs locking), read by prometheus-client at scrape time (a Collector); the
wiring serves them (wiring/metrics.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_COUNTERS = (
    ("published_total", "Events acknowledged by Kafka and marked sent."),
    ("failures_total", "Events marked failed by a non-retriable error."),
    ("retries_total", "Events rescheduled after a transient error."),
    ("publish_errors_total", "Batches that failed transiently."),
    ("producer_restarts_total", "Kafka producers recreated."),
    ("leases_lost_total", "Shard leases lost or run out."),
    ("swept_total", "Old sent events deleted."),
)
_GAUGES = (("shards_held", "Shards this relay holds."),)
_LAG = (
    "oldest_unsent_age_s",
    "Age in seconds of the oldest unsent event (0 when none waits); only from the relay "
    "holding shard 0, the one that measures it.",
)


@dataclass(eq=False)  # registries key collectors by identity
class RelayMetrics(Collector):
    published_total: int = 0  # events acknowledged by Kafka and marked sent
    failures_total: int = 0  # events marked failed (non-retriable)
    retries_total: int = 0  # events rescheduled after a transient failure
    publish_errors_total: int = 0  # batches that failed transiently
    producer_restarts_total: int = 0  # Kafka producers discarded and recreated
    leases_lost_total: int = 0
    swept_total: int = 0  # old sent events deleted
    shards_held: int = 0
    # The relay's lag (0 when nothing waits); None when this relay does not measure it (it
    # does not hold shard 0), and then not exported.
    oldest_unsent_age_s: float | None = None
    # Failed rounds per background loop (the supervisor's count, shared by reference).
    loop_failures: Counter[str] = field(default_factory=Counter)

    def collect(self) -> Iterator[Metric]:
        for name, text in _COUNTERS:
            yield CounterMetricFamily(f"checkout_relay_{name}", text, value=getattr(self, name))
        for name, text in _GAUGES:
            yield GaugeMetricFamily(f"checkout_relay_{name}", text, value=getattr(self, name))
        if self.oldest_unsent_age_s is not None:
            name, text = _LAG
            yield GaugeMetricFamily(f"checkout_relay_{name}", text, value=self.oldest_unsent_age_s)
        loops = CounterMetricFamily(
            "checkout_relay_loop_failures",
            "Rounds of a background loop that raised (then retried).",
            labels=["loop"],
        )
        for loop, count in sorted(self.loop_failures.items()):
            loops.add_metric([loop], count)
        yield loops

    def registry(self) -> CollectorRegistry:
        """A registry of these metrics alone, for the relay's endpoint."""
        registry = CollectorRegistry()
        registry.register(self)
        return registry

    def render(self) -> str:
        """The Prometheus text exposition of these metrics."""
        return generate_latest(self.registry()).decode()
