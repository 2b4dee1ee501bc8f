"""The runner's Prometheus series, on a registry of its own (served by wiring on
RUNNER_METRICS_ADDR)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .errors import Refusal


class RunnerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.videos = Counter(
            "checkout_runner_videos",
            "Events handled, by outcome: ok and failed (a result written), skipped (already "
            "ready: a redelivery), invalid (a record refused: "
            "checkout_runner_refused_records_total "
            "says why)",
            ["outcome"],
            registry=r,
        )
        self.failures = Counter(
            "checkout_runner_failures",
            "Failure results written, and attempts that failed and will be retried, by reason",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "checkout_runner_refused_records",
            "Records refused before anything was read or written for them, by reason (a "
            "field that is not what the relay writes: errors.Refusal); their offsets committed",
            ["reason"],
            registry=r,
        )
        for refusal in Refusal:  # every reason's series from the start, at 0
            self.refused.labels(refusal.value)
        self.results_written = Counter(
            "checkout_runner_results_written", "Result JSON objects stored", registry=r
        )
        self.frames = Counter(
            "checkout_runner_frames",
            "Sampled frames run through the detector (rate(): frames per second)",
            registry=r,
        )
        self.frames_per_second = Gauge(
            "checkout_runner_last_video_frames_per_second",
            "The last video's sampled frames per second of decoding and detection",
            registry=r,
        )
        self.video_seconds = Histogram(
            "checkout_runner_video_seconds",
            "Time from taking an event to its result stored",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=r,
        )
        self.in_progress = Gauge(
            "checkout_runner_videos_in_progress", "Videos being processed now", registry=r
        )
        self.lag = Gauge(
            "checkout_runner_consumer_lag",
            "Records on this member's partitions not yet consumed",
            registry=r,
        )
        self.assigned = Gauge(
            "checkout_runner_assigned_partitions",
            "Partitions of the topic this member holds",
            registry=r,
        )
        self.loop_failures = Counter(
            "checkout_runner_loop_failures",
            "Rounds of the consumer loop that failed (Kafka unreachable, a bug) and were retried",
            registry=r,
        )
