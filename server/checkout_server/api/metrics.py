"""The server's Prometheus metrics (prometheus-client), on a registry of the App's own.

gRPC series follow go-grpc-prometheus / py-grpc-prometheus: `grpc_server_started_total`,
`grpc_server_handled_total` and `grpc_server_handling_seconds`, labelled `grpc_type`,
`grpc_service`, `grpc_method` (and `grpc_code`, the status code's name as py-grpc-prometheus
writes it: OK, INVALID_ARGUMENT, ...). The service's own series are read from the objects
that keep them at scrape time, so the upload and status layers know nothing of Prometheus.
wiring/metrics.py serves the registry over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..auth.keys import RELOAD_ERROR_REASONS, KeyRing
from ..status.watch import WATCH_REFUSAL_REASONS, WatchHub
from ..upload.admission import REFUSAL_REASONS, Admission
from ..upload.pipeline import UploadPipeline
from ..upload.sweeper import UploadSweeper
from .auth import AuthInterceptor
from .downloads import DOWNLOAD_REFUSAL_REASONS, Downloads
from .rates import RATE_REFUSAL_REASONS, CallRates

# go-grpc-prometheus's default buckets, and longer ones for uploads and watches.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf"))


@dataclass(frozen=True)
class _MethodSeries:
    """A method's series, with its labels (found once: `labels()` takes a lock and builds a
    key at each call)."""

    started: Counter
    seconds: Histogram
    handled: dict[grpc.StatusCode, Counter] = field(default_factory=dict)


class GrpcMetrics:
    """The interceptor's CallObserver: counts and times every call."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self._started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels,
            registry=registry,
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels,
            registry=registry,
            buckets=_BUCKETS,
        )
        self._methods: dict[str, _MethodSeries] = {}

    def started(self, method: str, rpc_type: str) -> None:
        self._series(method, rpc_type).started.inc()

    def handled(self, method: str, rpc_type: str, code: grpc.StatusCode, seconds: float) -> None:
        series = self._series(method, rpc_type)
        handled = series.handled.get(code)
        if handled is None:
            labels = (rpc_type, *_split(method), code.name)
            handled = series.handled[code] = self._handled.labels(*labels)
        handled.inc()
        series.seconds.observe(seconds)

    def _series(self, method: str, rpc_type: str) -> _MethodSeries:
        """The series of `method` (one the server serves: a few dozen in all)."""
        series = self._methods.get(method)
        if series is None:
            labels = (rpc_type, *_split(method))
            series = self._methods[method] = _MethodSeries(
                self._started.labels(*labels), self._seconds.labels(*labels)
            )
        return series


def _split(method: str) -> tuple[str, str]:
    """'/checkout.v1.CheckoutService/UploadVideo' -> ('checkout.v1.CheckoutService',
    'UploadVideo')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class ServiceCollector(Collector):
    """The service's own series, read from the pipeline, the uploads' admission, the watch hub,
    the API keys and the sweeper. (The outbox lag is the relay's: relay/metrics.py.)"""

    def __init__(
        self,
        pipeline: UploadPipeline,
        admission: Admission,
        hub: WatchHub,
        keys: KeyRing | None = None,
        sweeper: UploadSweeper | None = None,
        auth: AuthInterceptor | None = None,
        rates: CallRates | None = None,
        downloads: Downloads | None = None,
    ) -> None:
        self._downloads = downloads
        self._rates = rates
        self._auth = auth
        self._sweeper = sweeper
        self._pipeline = pipeline
        self._admission = admission
        self._hub = hub
        self._keys = keys

    def collect(self) -> Iterator[Metric]:
        yield from self._uploads()
        yield from self._watchers_and_calls()
        yield from self._downloads_series()
        yield from self._sweeps()
        yield from self._auth_series()

    def _uploads(self) -> Iterator[Metric]:
        admission = self._admission
        yield CounterMetricFamily(
            "checkout_upload_bytes",
            "Bytes of video received by uploads (gRPC and REST), kept or not.",
            value=self._pipeline.bytes_received_total,
        )
        yield _by_reason(
            "checkout_uploads_refused",
            "Uploads and resumable writes refused or cut by the admission, by reason (the "
            "error's): too many at once, per client, too fast, no memory, too many sessions, "
            "stalled.",
            REFUSAL_REASONS,
            admission.refusals,
        )
        yield CounterMetricFamily(
            "checkout_uploads_rate_limited",
            "Uploads refused because their client had used its UPLOAD_RATE_PER_MINUTE.",
            value=admission.rate_limited_total,
        )
        yield GaugeMetricFamily(
            "checkout_uploads_in_flight",
            "Uploads streaming now.",
            value=admission.uploads_in_flight,
        )
        yield GaugeMetricFamily(
            "checkout_upload_memory_budget_bytes_used",
            "Bytes of UPLOAD_MEMORY_BUDGET_BYTES held by uploads now (what they buffer, "
            "in 1 MiB granules).",
            value=admission.memory.used_bytes,
        )

    def _watchers_and_calls(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "checkout_watchers", "WatchStatus streams open now.", value=self._hub.watchers
        )
        yield _by_reason(
            "checkout_watchers_refused",
            "WatchStatus streams refused before they subscribed, by reason (WATCH_MAX_WATCHERS, "
            "WATCH_MAX_WATCHERS_PER_CLIENT).",
            WATCH_REFUSAL_REASONS,
            self._hub.refusals,
        )
        yield GaugeMetricFamily(
            "checkout_status_topic_live",
            "1 while this server reads the status topic (changes are pushed), 0 while its "
            "watchers poll the database instead.",
            value=int(self._hub.live),
        )
        reads = CounterMetricFamily(
            "checkout_watch_database_reads",
            "Database reads of the watch path, by what: `poll` (status records changed, while "
            "the status topic is not live or an announcement was lost), `record` (the record "
            "of an announced result this server had not seen).",
            labels=["what"],
        )
        reads.add_metric(["poll"], self._hub.polls)
        reads.add_metric(["record"], self._hub.record_reads)
        yield reads
        if self._rates is not None:
            yield _by_reason(
                "checkout_calls_rate_limited",
                "CreateRequest and ListStatuses calls refused for their client's rate, by "
                "reason (REQUEST_RATE_PER_MINUTE, LIST_RATE_PER_MINUTE).",
                RATE_REFUSAL_REASONS,
                self._rates.refusals,
            )
            yield CounterMetricFamily(
                "checkout_result_checks_skipped",
                "GetStatus and WatchStatus lookups of a waiting event answered from its status "
                "record without the storage check, their client past RESULT_CHECK_RATE_PER_S.",
                value=self._rates.result_checks_skipped,
            )

    def _downloads_series(self) -> Iterator[Metric]:
        if self._downloads is None:
            return
        yield GaugeMetricFamily(
            "checkout_downloads_in_flight",
            "GetVideo streams sending now.",
            value=self._downloads.in_flight,
        )
        yield _by_reason(
            "checkout_downloads_refused",
            "GetVideo streams refused (VIDEO_DOWNLOAD_MAX_CONCURRENT, "
            "VIDEO_DOWNLOAD_MAX_CONCURRENT_PER_CLIENT) or cut because their client took "
            "nothing for VIDEO_DOWNLOAD_STALL_TIMEOUT_S (DOWNLOAD_STALLED), by reason.",
            DOWNLOAD_REFUSAL_REASONS,
            self._downloads.refusals,
        )

    def _sweeps(self) -> Iterator[Metric]:
        if self._sweeper is None:
            return
        sweeper = self._sweeper
        yield CounterMetricFamily(
            "checkout_upload_sessions_expired",
            "Resumable upload sessions the sweeper ended past UPLOAD_SESSION_TTL_S.",
            value=sweeper.expired_total,
        )
        yield CounterMetricFamily(
            "checkout_orphan_multipart_uploads_aborted",
            "Multipart uploads under input/ that no session recorded, aborted by the "
            "sweeper after UPLOAD_MAX_DURATION_S.",
            value=sweeper.orphans_aborted_total,
        )
        yield CounterMetricFamily(
            "checkout_orphan_objects_removed",
            "Complete objects under input/ that no event named, removed by the sweeper "
            "after UPLOAD_ORPHAN_OBJECT_AGE_S.",
            value=sweeper.orphan_objects_removed_total,
        )

    def _auth_series(self) -> Iterator[Metric]:
        if self._keys is not None:
            keys = self._keys
            yield GaugeMetricFamily(
                "checkout_auth_keys",
                "API keys in force (AUTH_KEYS_FILE); 0 while the file is refused.",
                value=len(keys),
            )
            yield GaugeMetricFamily(
                "checkout_auth_keys_loaded",
                "1 while AUTH_KEYS_FILE is valid, 0 while it is refused (deleted, unreadable, "
                "empty or invalid): no key is accepted then.",
                value=0 if keys.refused else 1,
            )
            yield _by_reason(
                "checkout_auth_keys_reload_errors",
                "Changes of AUTH_KEYS_FILE after start that refused it, by reason (missing, "
                "unreadable, empty, invalid): no key is in force until it is valid again.",
                RELOAD_ERROR_REASONS,
                keys.reload_errors,
            )
        if self._auth is not None:
            yield CounterMetricFamily(
                "checkout_auth_streams_revoked",
                "Open streams (uploads, WriteUpload, WatchStatus) ended with API_KEY_REVOKED "
                "because their key left AUTH_KEYS_FILE.",
                value=self._auth.revoked_streams_total,
            )


def _by_reason(
    name: str, text: str, reasons: Iterable[str], counts: Mapping[str, int]
) -> CounterMetricFamily:
    """A counter labelled `reason`, with a sample for every reason (0 for those not seen)."""
    family = CounterMetricFamily(name, text, labels=["reason"])
    for reason in reasons:
        family.add_metric([reason], counts.get(reason, 0))
    return family
