"""Service configuration: frozen settings per process, built from the environment in its entry
point (`ServerSettings.from_env()`, `RelaySettings.from_env()`).

Each process's settings are made of the sections it uses, and read as every process of
checkout reads its settings (checkout_common.settings, the runner's too): every field reads
the environment variable named after it, upper-cased (`mongo_uri` <- MONGO_URI), and
documents it; an unset or blank variable keeps the default. Secrets may also come from a file
named by `<NAME>_FILE` (Docker/Kubernetes secrets), which wins over the plain variable; a flag
that is neither true nor false is refused. Settings built in code
(`ServerSettings(mongo_db=...)`) never read the environment. Every invalid value raises
ConfigError naming its variable.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from checkout_common.kafka_security import KafkaSecurity
from checkout_common.result_key import DEFAULT_TEMPLATE, check_template
from checkout_common.settings import EnvRule as EnvRule  # tools/gen_docs.py reads it here
from checkout_common.settings import EnvSettings
from checkout_common.settings import Flag as Flag
from checkout_common.settings import Names as Names
from checkout_common.settings import Secret as Secret
from checkout_common.status_message import DEFAULT_TOPIC as DEFAULT_STATUS_TOPIC

from .errors import ConfigError
from .outbox.sharding import SLOTS
from .upload import pipeline as _pipeline
from .upload.failpoints import POINTS as FAILPOINTS

MiB = 1024 * 1024
GiB = 1024 * MiB
# S3 multipart limits: every part but the last is 5 MiB..5 GiB, at most 10,000 parts.
S3_MIN_PART_BYTES = 5 * MiB
S3_MAX_PART_BYTES = 5 * GiB
S3_MAX_PARTS = 10_000


class Section(BaseModel):
    """A group of settings; the processes' settings classes are made of sections."""

    # SettingsConfigDict (a ConfigDict) as in BaseSettings, which the processes' classes join
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        frozen=True, extra="forbid", validate_default=True, use_attribute_docstrings=True
    )


# --- Shared sections --------------------------------------------------------------------------


class MongoSection(Section):
    """MongoDB.

    The outbox messages and the status records (the server's and the relay's)."""

    mongo_uri: Secret = "mongodb://mongo:27017/"
    """MONGO_URI: the outbox's MongoDB (secret)."""
    mongo_db: str = "main_db"
    """MONGO_DB: the database (name from the seed service)."""
    mongo_outbox_collection: str = "outbox"
    """MONGO_OUTBOX_COLLECTION: the outbox messages the relay publishes."""
    mongo_status_collection: str = "event_statuses"
    """MONGO_STATUS_COLLECTION: one status record per event, kept after its outbox message is
    swept (what ListStatuses/GetStatus/WatchStatus read)."""
    mongo_timeout_ms: int = 5_000
    """MONGO_TIMEOUT_MS: server selection / socket timeout for MongoDB calls."""


class StartupSection(Section):
    """Start-up."""

    startup_timeout_s: float = 60.0
    """STARTUP_TIMEOUT_S: how long start-up waits for its dependencies to answer."""


class LoggingSection(Section):
    """Logging.

    One line per event, with the request id and the event id."""

    log_level: Annotated[str, AfterValidator(str.upper)] = "INFO"
    """LOG_LEVEL: the lowest level logged."""
    log_format: Annotated[str, AfterValidator(str.lower)] = ""
    """LOG_FORMAT: json | console (default: console on a terminal, else json)."""


class TracingSection(Section):
    """Tracing.

    OpenTelemetry spans of the server and the relay."""

    otel_exporter_otlp_endpoint: str = ""
    """OTEL_EXPORTER_OTLP_ENDPOINT: where spans are exported over OTLP/gRPC (e.g.
    `http://otel-collector:4317`); empty (the default): nothing is exported, and the server
    makes no spans (an upload stores the `traceparent` its caller sent, if any)."""


# --- The server's sections ----------------------------------------------------------------------


class GrpcSection(Section):
    """The gRPC server.

    Where it listens, TLS and mTLS, the dependency probes of its health service, and the
    graceful stop on SIGTERM."""

    grpc_addr: str = "127.0.0.1:50051"
    """GRPC_ADDR: where the gRPC server listens: loopback by default; an address other
    machines reach (`0.0.0.0:50051`, as the image sets) needs AUTH_ENABLED, or
    INSECURE_PUBLIC_WITHOUT_AUTH."""
    shutdown_grace_s: float = 30.0
    """SHUTDOWN_GRACE_S: how long in-flight RPCs may finish after SIGTERM (after the drain).
    Uploads still streaming 1 s before it ends (half-way, if it is under 2 s) are answered
    UNAVAILABLE SHUTTING_DOWN and aborted (resumable writes keep their committed parts and get
    their `persisted_size`); what is left when it ends is cancelled."""
    shutdown_drain_s: float = 2.0
    """SHUTDOWN_DRAIN_S: after SIGTERM, how long the server keeps its listener open only to
    answer new calls UNAVAILABLE SHUTTING_DOWN (health says NOT_SERVING meanwhile), so load
    balancers and clients go elsewhere before connections are refused; running calls go on.
    0: none."""
    health_interval_s: float = 5.0
    """HEALTH_INTERVAL_S: how often dependencies are probed for the health service."""
    trusted_proxies: Names = frozenset()
    """TRUSTED_PROXIES: comma-separated IP addresses of the proxies in front of the server
    (Envoy) whose `x-forwarded-for` names the client, for the per-client limits with
    authentication off, so that REST clients behind one Envoy are told apart; the header is
    ignored from anyone else. Empty (the default): none, and every client behind Envoy is
    Envoy's address."""
    admin_token: Secret = ""
    """ADMIN_TOKEN: with authentication off, the bearer token for Cleanup (secret); empty
    disables Cleanup. With authentication on, `admin` keys call Cleanup instead."""
    tls_cert_file: str = ""
    """TLS_CERT_FILE: PEM certificate chain of the gRPC server (the server's certificate
    first); with TLS_KEY_FILE the server serves TLS, else plaintext."""
    tls_key_file: str = ""
    """TLS_KEY_FILE: PEM private key of TLS_CERT_FILE."""
    tls_client_ca_file: str = ""
    """TLS_CLIENT_CA_FILE: PEM certificates of the CAs that sign client certificates; when set
    (with TLS_CERT_FILE), clients must present a certificate they sign (mTLS)."""

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, proxies: frozenset[str]) -> frozenset[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_address(proxy)
            except ValueError:
                raise ConfigError(f"TRUSTED_PROXIES: {proxy!r} is no IP address") from None
        return proxies

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return self


class AuthSection(Section):
    """API keys.

    Authentication by API key on every call, the keys' roles, and the per-client upload
    rate."""

    auth_enabled: Flag = False
    """AUTH_ENABLED: require an API key (`authorization: Bearer <key>`) on every call but the
    health and reflection services; off by default (the local stack, with a warning at start),
    on in docker-compose.yml."""
    auth_keys_file: str = ""
    """AUTH_KEYS_FILE: the TOML file of hashed API keys, their clients and roles
    (docs/configuration.md, Authentication; `checkout-keys new` makes a key); re-read when it
    changes."""
    auth_reload_interval_s: float = 2.0
    """AUTH_RELOAD_INTERVAL_S: how often AUTH_KEYS_FILE is checked for changes."""
    insecure_public_without_auth: Flag = False
    """INSECURE_PUBLIC_WITHOUT_AUTH: let the server listen on an address other machines reach
    (GRPC_ADDR not loopback) with authentication off, so that anyone who reaches it may
    upload, read every event and result; without it such a start is refused."""
    upload_rate_per_minute: int = 60
    """UPLOAD_RATE_PER_MINUTE: uploads one authenticated client may start in any 60 seconds,
    per server process (0: no limit); one more is refused with RESOURCE_EXHAUSTED
    UPLOAD_RATE_LIMITED and a retry hint."""

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        if self.auth_enabled and not self.auth_keys_file:
            raise ConfigError("AUTH_ENABLED needs AUTH_KEYS_FILE (the hashed API keys)")
        if self.auth_reload_interval_s <= 0:
            raise ConfigError("AUTH_RELOAD_INTERVAL_S must be positive")
        if self.upload_rate_per_minute < 0:
            raise ConfigError("UPLOAD_RATE_PER_MINUTE must be 0 (no limit) or more")
        return self


class StorageSection(Section):
    """Object storage.

    MinIO, as in the original service, and the buckets an upload may name."""

    minio_endpoint: str = "minio:9000"
    """MINIO_ENDPOINT: the object storage, as in the seed service."""
    minio_access_key: Secret = "minioadmin"
    """MINIO_ACCESS_KEY: its access key (secret)."""
    minio_secret_key: Secret = "minioadmin"
    """MINIO_SECRET_KEY: its secret key (secret)."""
    minio_secure: Flag = False
    """MINIO_SECURE: HTTPS (1/true/yes/on or 0/false/no/off)."""
    default_bucket: str = "videos"
    """DEFAULT_BUCKET: used when a request names none."""
    allowed_buckets: Names = frozenset({"videos"})
    """ALLOWED_BUCKETS: comma-separated allow-list (the default bucket is always added);
    created at start-up."""

    @field_validator("allowed_buckets")
    @classmethod
    def _add_default_bucket(cls, buckets: frozenset[str], info: ValidationInfo) -> frozenset[str]:
        default = info.data.get("default_bucket")
        return buckets | {default} if default else buckets


class UploadSection(Section):
    """Upload limits.

    Size, multipart parts, memory and concurrency of every upload, plain or resumable."""

    upload_max_bytes: int = 4 * GiB
    """UPLOAD_MAX_BYTES: the largest accepted video (default 4 GiB)."""
    upload_part_bytes: int = 8 * MiB
    """UPLOAD_PART_BYTES: S3 multipart part size (default 8 MiB); the server buffers about one
    part per upload. S3 allows parts of 5 MiB to 5 GiB and at most 10,000 of them, so
    UPLOAD_MAX_BYTES must fit in 10,000 parts (checked at start-up)."""
    upload_memory_budget_bytes: int = 256 * MiB
    """UPLOAD_MEMORY_BUDGET_BYTES: what all uploads together may buffer (default 256 MiB). An
    upload holds what it buffers, in 1 MiB steps as its data arrives, two parts at most (the
    one being collected and the one in flight); one that needs more than is free waits
    UPLOAD_MEMORY_WAIT_S, then is refused (UPLOAD_MEMORY_BUSY)."""
    storage_abort_retry_s: float = 300.0
    """STORAGE_ABORT_RETRY_S: how long a failed upload keeps retrying to abort its multipart
    upload while storage is unreachable (in the background; the client is answered at once)."""
    upload_max_concurrent: int = 64
    """UPLOAD_MAX_CONCURRENT: uploads one process streams at once (default 64); one more is
    refused at once, before any byte is stored, with RESOURCE_EXHAUSTED TOO_MANY_UPLOADS and a
    retry hint."""
    upload_max_concurrent_per_client: int = 8
    """UPLOAD_MAX_CONCURRENT_PER_CLIENT: uploads and resumable writes one client streams at
    once (default 8: an eighth of UPLOAD_MAX_CONCURRENT, half the memory budget at most); one
    more is refused with RESOURCE_EXHAUSTED TOO_MANY_CLIENT_UPLOADS and a retry hint. The
    client is its API key's owner, or with authentication off its address (behind Envoy,
    Envoy's: all REST clients share one count then)."""
    upload_max_open_sessions_per_client: int = 16
    """UPLOAD_MAX_OPEN_SESSIONS_PER_CLIENT: resumable sessions one client may have open (not
    finished, cancelled or expired; default 16, 0: no limit); one more is refused with
    RESOURCE_EXHAUSTED TOO_MANY_UPLOAD_SESSIONS. Counted in the database across replicas; two
    starts at the same moment may both pass."""
    upload_memory_wait_s: float = 5.0
    """UPLOAD_MEMORY_WAIT_S: how long an upload or write waits for more buffer memory while
    UPLOAD_MEMORY_BUDGET_BYTES is spent (default 5 s); then it is refused with
    RESOURCE_EXHAUSTED UPLOAD_MEMORY_BUSY and a retry hint (a write keeps what it committed
    and says where to resume)."""
    upload_idle_timeout_s: float = 30.0
    """UPLOAD_IDLE_TIMEOUT_S: the longest an upload stream (UploadVideo, REST, WriteUpload)
    may send nothing, its first message and a REST form's fields included (default 30 s);
    then it is cut with DEADLINE_EXCEEDED UPLOAD_STALLED and its upload removed (a resumable
    session keeps its durable parts)."""
    upload_min_bytes_per_s: int = 16 * 1024
    """UPLOAD_MIN_BYTES_PER_S: the least an upload stream must send per second, averaged over
    each UPLOAD_THROUGHPUT_WINDOW_S of waiting for it (default 16 KiB/s, a slow mobile link;
    0: no minimum); time the server spends storing is not counted. Below it the stream is cut
    with UPLOAD_STALLED."""
    upload_throughput_window_s: float = 60.0
    """UPLOAD_THROUGHPUT_WINDOW_S: the window UPLOAD_MIN_BYTES_PER_S is averaged over (default
    60 s)."""

    @model_validator(mode="after")
    def _check_upload(self) -> Self:
        if not S3_MIN_PART_BYTES <= self.upload_part_bytes <= S3_MAX_PART_BYTES:
            raise ConfigError("UPLOAD_PART_BYTES must be between 5 MiB and 5 GiB")
        if self.upload_max_bytes > self.upload_part_bytes * S3_MAX_PARTS:
            raise ConfigError(
                "UPLOAD_MAX_BYTES needs more than 10,000 parts: raise UPLOAD_PART_BYTES"
            )
        if self.upload_memory_budget_bytes < 2 * self.upload_part_bytes:
            raise ConfigError("UPLOAD_MEMORY_BUDGET_BYTES must hold two parts (UPLOAD_PART_BYTES)")
        if self.upload_max_bytes <= 0:
            raise ConfigError("UPLOAD_MAX_BYTES must be positive")
        if self.upload_max_concurrent < 1:
            raise ConfigError("UPLOAD_MAX_CONCURRENT must be at least 1")
        if self.upload_max_concurrent_per_client < 1:
            raise ConfigError("UPLOAD_MAX_CONCURRENT_PER_CLIENT must be at least 1")
        if min(self.upload_idle_timeout_s, self.upload_throughput_window_s) <= 0:
            raise ConfigError("UPLOAD_IDLE_TIMEOUT_S and UPLOAD_THROUGHPUT_WINDOW_S must be > 0")
        if min(self.upload_memory_wait_s, self.upload_min_bytes_per_s) < 0:
            raise ConfigError("UPLOAD_MEMORY_WAIT_S and UPLOAD_MIN_BYTES_PER_S must be 0 or more")
        if self.upload_max_open_sessions_per_client < 0:
            raise ConfigError("UPLOAD_MAX_OPEN_SESSIONS_PER_CLIENT must be 0 (no limit) or more")
        return self


class ResumableSection(Section):
    """Resumable upload sessions.

    StartResumableUpload and WriteUpload: the sessions, their write leases, and the sweeper
    that cleans up after expired sessions and crashed uploads."""

    mongo_upload_sessions_collection: str = "upload_sessions"
    """MONGO_UPLOAD_SESSIONS_COLLECTION: one document per resumable upload session."""
    mongo_upload_facts_collection: str = "upload_facts"
    """MONGO_UPLOAD_FACTS_COLLECTION: what happened to each session (its multipart upload,
    committed parts, leases, terminal marker), one insert-once document per fact."""
    upload_session_ttl_s: float = 12 * 3600.0
    """UPLOAD_SESSION_TTL_S: how long a resumable upload session may stay unfinished (default
    12 h); then it expires (NOT_FOUND) and the sweeper aborts its multipart upload. Must be
    below STORAGE_STALE_UPLOADS_EXPIRY_S, MinIO's stale multipart cleanup (`api
    stale_uploads_expiry`, 24 h by default, counted from the upload's start and checked every
    6 h); checked at start-up."""
    upload_lease_ttl_s: float = 10.0
    """UPLOAD_LEASE_TTL_S: a session's write lease not renewed for this long (plus
    UPLOAD_CLOCK_SKEW_S) may be taken by another stream; the holder renews it, and looks for
    a request to let go, every third of it."""
    upload_clock_skew_s: float = 2.0
    """UPLOAD_CLOCK_SKEW_S: assumed worst clock difference between servers (leases only;
    no commit rests on clocks)."""
    upload_max_duration_s: float = 4 * 3600.0
    """UPLOAD_MAX_DURATION_S: the longest one UploadVideo or WriteUpload stream may last
    (default 4 h); it is cut then (DEADLINE_EXCEEDED UPLOAD_TOO_LONG; a write keeps what it
    committed). The sweeper aborts a multipart upload under
    `input/` that no session recorded once it is older than this: what a crashed server's
    uploads leave. Must be below STORAGE_STALE_UPLOADS_EXPIRY_S, MinIO's stale multipart
    cleanup (24 h; checked at start-up)."""
    upload_sweep_interval_s: float = 60.0
    """UPLOAD_SWEEP_INTERVAL_S: how often each server sweeps expired sessions, orphaned
    multipart uploads and one page (1000 keys) per bucket of objects without an event (every
    server does; sweeps are safe to run at once)."""
    upload_orphan_object_age_s: float = 3600.0
    """UPLOAD_ORPHAN_OBJECT_AGE_S: a complete object under `input/` that no event (and no
    resumable session) names is removed by the sweeper once it is older than this (default
    1 h): what a server killed between an object's completion and its event's insert leaves.
    At least the longest an upload takes from its object's completion to knowing whether its
    event was written (`upload_commit_gap_s`: LOST_INSERT_CHECK_S, 30 s, and three database
    calls of 6 × MONGO_TIMEOUT_MS each; 120 s at the defaults), plus 10 s: 130 s at the
    defaults, checked at start-up."""
    storage_stale_uploads_expiry_s: float = 24 * 3600.0
    """STORAGE_STALE_UPLOADS_EXPIRY_S: MinIO's stale multipart cleanup (`api
    stale_uploads_expiry`, 24 h by default, counted from an upload's start): set it to what
    MinIO is given. UPLOAD_SESSION_TTL_S and UPLOAD_MAX_DURATION_S must stay below it, or MinIO
    could remove the parts of a session or of a stream still in progress."""
    upload_failpoint: str = ""
    """UPLOAD_FAILPOINT: for crash tests only: the process SIGKILLs itself when a resumable
    upload reaches this point (`after_part`, `after_commit`, `after_complete`,
    `after_outbox`; upload/failpoints.py). Empty, the default: never."""
    upload_takeover_wait_s: float = 15.0
    """UPLOAD_TAKEOVER_WAIT_S: how long a stream waits for the stream that writes a session
    to let go before it is refused with ABORTED UPLOAD_BUSY."""

    @model_validator(mode="after")
    def _check_resumable(self) -> Self:
        if self.upload_session_ttl_s <= 0:
            raise ConfigError("UPLOAD_SESSION_TTL_S must be positive")
        if self.upload_failpoint and self.upload_failpoint not in FAILPOINTS:
            raise ConfigError(f"UPLOAD_FAILPOINT must be one of {', '.join(sorted(FAILPOINTS))}")
        if self.upload_max_duration_s <= 0 or self.upload_sweep_interval_s <= 0:
            raise ConfigError("UPLOAD_MAX_DURATION_S and UPLOAD_SWEEP_INTERVAL_S must be positive")
        expiry = self.storage_stale_uploads_expiry_s
        if max(self.upload_session_ttl_s, self.upload_max_duration_s) >= expiry:
            raise ConfigError(
                "UPLOAD_SESSION_TTL_S and UPLOAD_MAX_DURATION_S must be below "
                f"STORAGE_STALE_UPLOADS_EXPIRY_S ({expiry:g} s, MinIO's stale multipart cleanup)"
            )
        if self.upload_lease_ttl_s <= 2 * self.upload_clock_skew_s:
            raise ConfigError("UPLOAD_LEASE_TTL_S must be more than twice UPLOAD_CLOCK_SKEW_S")
        if self.upload_takeover_wait_s <= self.upload_lease_ttl_s / 3:
            raise ConfigError(
                "UPLOAD_TAKEOVER_WAIT_S must be longer than a third of UPLOAD_LEASE_TTL_S"
            )
        return self


class MetricsSection(Section):
    """Metrics.

    The server's Prometheus endpoint (the outbox lag is the relay's metric)."""

    metrics_addr: Annotated[str, EnvRule.KEEP_EMPTY] = "127.0.0.1:9463"
    """METRICS_ADDR: Prometheus metrics over HTTP (`GET /metrics`), on loopback by default
    (compose sets `0.0.0.0:9463` for its network); set empty to disable."""


def _check_udp_targets(name: str, targets: frozenset[str]) -> frozenset[str]:
    for target in targets:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{name}: {target!r} is not host:port")
    return targets


MIN_WAKE_SECRET_CHARS = 16


class OutboxWakeSection(Section):
    """Waking the relays.

    The server tells the relays of every outbox message it writes (UDP datagrams)."""

    relay_wake_targets: Names = frozenset()
    """RELAY_WAKE_TARGETS: comma-separated `host:port` UDP addresses of the relays'
    RELAY_WAKE_ADDR (by default their health address); the server sends each of them a wake-up
    after every outbox message it writes, so an idle relay publishes at once instead of at its
    safety-net poll, RELAY_POLL_INTERVAL_S (empty, the default: none are sent). Names are
    resolved again every 30 s."""

    @field_validator("relay_wake_targets")
    @classmethod
    def _check_targets(cls, targets: frozenset[str]) -> frozenset[str]:
        return _check_udp_targets("RELAY_WAKE_TARGETS", targets)


class WatchWakeSection(Section):
    """Waking the watchers.

    A process tells the servers of a status change the status topic did not take (UDP
    datagrams), so they read it from the database."""

    watch_wake_targets: Names = frozenset()
    """WATCH_WAKE_TARGETS: comma-separated `host:port` UDP addresses of the servers'
    WATCH_WAKE_ADDR; this process sends each of them a wake-up when a status change it wrote
    (the relay: events marked sent or failed; a server: new events and results) was not taken
    by STATUS_TOPIC (Kafka down or slow), or for every change without one, so their watchers
    learn of it at once instead of at WATCH_POLL_INTERVAL_S (empty, the default: none are
    sent; a server always tells its own watchers). Names are resolved again every 30 s."""
    wake_secret: Secret = ""
    """WAKE_SECRET: the secret every server and relay of a deployment shares (at least 16
    characters): wake-ups are signed with it (HMAC-SHA256), and one that is not, or is more
    than 30 s old, is dropped and counted. The status changes they announce on STATUS_TOPIC
    are signed with it too, and a server takes none that is not (the runner, which has no
    secret, announces results, which are checked in storage). Empty (the default): no wake-up
    is sent or listened for, changes are found by polling (RELAY_POLL_INTERVAL_S,
    WATCH_POLL_INTERVAL_S), and status changes are not signed."""

    @field_validator("watch_wake_targets")
    @classmethod
    def _check_targets(cls, targets: frozenset[str]) -> frozenset[str]:
        return _check_udp_targets("WATCH_WAKE_TARGETS", targets)

    @model_validator(mode="after")
    def _check_wake_secret(self) -> Self:
        if self.wake_secret and len(self.wake_secret) < MIN_WAKE_SECRET_CHARS:
            raise ConfigError(f"WAKE_SECRET needs at least {MIN_WAKE_SECRET_CHARS} characters")
        if self.watch_wake_targets and not self.wake_secret:
            raise ConfigError("WATCH_WAKE_TARGETS needs WAKE_SECRET (wake-ups are signed)")
        return self


class StatusSection(Section):
    """Statuses, results and watching.

    Where results are read, and the change feed of WatchStatus (docs/status.md, Watching)."""

    result_key_template: str = DEFAULT_TEMPLATE
    """RESULT_KEY_TEMPLATE: where the detection runner writes its JSON result, in the bucket of
    the video ({video_id} or {event_id})."""
    result_max_bytes: int = 3 * MiB
    """RESULT_MAX_BYTES: the largest result GetResult returns (default 3 MiB; a gRPC message is
    at most 4 MiB)."""
    request_rate_per_minute: int = 60
    """REQUEST_RATE_PER_MINUTE: CreateRequest calls (each has a video processed again) one client
    may make in any 60 seconds, per server process (0: no limit); one more is refused
    RESOURCE_EXHAUSTED REQUEST_RATE_LIMITED with a retry hint."""
    list_rate_per_minute: int = 600
    """LIST_RATE_PER_MINUTE: ListStatuses calls (REST `/api/status/all` among them) one client
    may make in any 60 seconds, per server process (0: no limit); one more is refused
    RESOURCE_EXHAUSTED LIST_RATE_LIMITED with a retry hint."""
    result_check_rate_per_s: int = 20
    """RESULT_CHECK_RATE_PER_S: storage checks for the result of an event still waiting that
    one client's GetStatus calls (and the first answer of its WatchStatus streams) may make in
    any second, per server process (0: no limit). Past it a lookup is answered from the status
    record, not refused: the result of a runner that does not announce it on STATUS_TOPIC is
    then found by a later lookup, the watch path or the reconcile, and one client's lookups of
    many events cost the storage this many requests a second at most."""
    list_count_max_events: int = 20_000
    """LIST_COUNT_MAX_EVENTS: ListStatuses counts the events that match (`total`) only while
    the database holds at most this many status records (its own estimate); above it `total`
    is -1. MongoDB's indexes count quickly; FerretDB 1.24 counts by reading every record
    (0.23 s at 3,000 and 1.9 s at 20,000 records here), which LIST_COUNT_BUDGET_S stops."""
    list_count_budget_s: float = 0.25
    """LIST_COUNT_BUDGET_S: a count that takes longer than this makes the process stop
    counting at that many records and above (`total` -1), so that one slow count is paid once,
    not on every first page."""
    list_page_budget_s: float = 2.0
    """LIST_PAGE_BUDGET_S: the time a ListStatuses page may spend reading the records an hour
    at a time; when it runs out before the page is full, the page ends there with a
    next_page_token (a page may then be short, even empty)."""
    result_reconcile_interval_s: float = 30.0
    """RESULT_RECONCILE_INTERVAL_S: how often the events still waiting are read and those due
    checked for a result: the path of a runner that does not announce its results on
    STATUS_TOPIC (watched events are checked every WATCH_RESULT_CHECK_INTERVAL_S, GetStatus
    checks its event). Each round reads the last day's waiting events and one older hour's
    (docs/status.md, "Listing at any size"); while rounds meet no new upload and find no
    result, the pause doubles up to 5 minutes."""
    watch_poll_interval_s: float = 10.0
    """WATCH_POLL_INTERVAL_S: the safety net: while someone watches, the longest the process
    goes without looking for status changes. Changes normally come with a wake-up (its own,
    or over WATCH_WAKE_ADDR from the relays and other servers), which starts a look at once;
    this bounds only changes whose writer sent none or whose wake-up was lost. Each look is a
    query FerretDB 1.24 answers by reading every status record (about 90 ms of its CPU over
    600 records, bench/relay_throughput.py --stack): every 0.25 s that was 20 % of a core
    while anyone watched."""
    watch_poll_min_gap_s: float = 0.1
    """WATCH_POLL_MIN_GAP_S: the least time between two looks, so a flood of wake-ups (a
    burst of uploads) costs the database at most one query per this interval."""
    watch_wake_addr: str = ""
    """WATCH_WAKE_ADDR: where the server receives wake-ups for its watchers (UDP datagrams, see
    WATCH_WAKE_TARGETS); empty (the default): the host and port of GRPC_ADDR, over UDP;
    `off`: none, the server finds other processes' changes by polling."""
    watch_result_check_interval_s: float = 0.5
    """WATCH_RESULT_CHECK_INTERVAL_S: how often the events someone watches are checked for
    their result (one storage request per watched event, not per watcher, and 50 a second at
    most: with more watched events each is checked less often). The path of a runner that
    does not announce its results on STATUS_TOPIC."""
    watch_heartbeat_s: float = 15.0
    """WATCH_HEARTBEAT_S: a watch stream with no change for this long gets a keep-alive."""
    watch_max_pending: int = 1000
    """WATCH_MAX_PENDING: changes a watcher may fall behind before it must re-subscribe."""
    watch_max_watchers: int = 4096
    """WATCH_MAX_WATCHERS: WatchStatus streams one server holds open at once; more are refused
    TOO_MANY_WATCHERS (each costs a stream's buffers and a mailbox, not a query)."""
    watch_max_watchers_per_client: int = 256
    """WATCH_MAX_WATCHERS_PER_CLIENT: WatchStatus streams one client (its key's owner; its
    address with authentication off, see TRUSTED_PROXIES) holds open on one server; more are
    refused TOO_MANY_CLIENT_WATCHERS. Watching every event takes one stream."""

    @model_validator(mode="after")
    def _check_watch(self) -> Self:
        if not 0 < self.watch_poll_min_gap_s <= self.watch_poll_interval_s:
            raise ConfigError("need 0 < WATCH_POLL_MIN_GAP_S <= WATCH_POLL_INTERVAL_S")
        rates = (
            self.request_rate_per_minute,
            self.list_rate_per_minute,
            self.result_check_rate_per_s,
        )
        if min(rates) < 0:
            raise ConfigError(
                "REQUEST_RATE_PER_MINUTE, LIST_RATE_PER_MINUTE and RESULT_CHECK_RATE_PER_S must"
                " be 0 (no limit) or more"
            )
        if (
            self.list_count_max_events < 0
            or self.list_count_budget_s <= 0
            or self.list_page_budget_s <= 0
        ):
            raise ConfigError(
                "need LIST_COUNT_MAX_EVENTS >= 0, LIST_COUNT_BUDGET_S > 0 and "
                "LIST_PAGE_BUDGET_S > 0"
            )
        if not 1 <= self.watch_max_watchers_per_client <= self.watch_max_watchers:
            raise ConfigError("need 1 <= WATCH_MAX_WATCHERS_PER_CLIENT <= WATCH_MAX_WATCHERS")
        return self

    @field_validator("result_key_template")
    @classmethod
    def _check_template(cls, template: str) -> str:
        return check_template(template)


class DownloadSection(Section):
    """Video downloads.

    GetVideo (REST `GET /api/video/{event_id}`): how many videos a server sends at once, and
    how long a reader that takes nothing may hold its stream (docs/status.md, Videos)."""

    video_download_max_concurrent: int = 32
    """VIDEO_DOWNLOAD_MAX_CONCURRENT: GetVideo streams one server sends at once; one more is
    refused TOO_MANY_DOWNLOADS with a retry hint, before anything is read. Each holds at most
    one 1 MiB message in the server's memory and a connection to storage while it runs."""
    video_download_max_concurrent_per_client: int = 4
    """VIDEO_DOWNLOAD_MAX_CONCURRENT_PER_CLIENT: GetVideo streams one client (its key's owner;
    its address with authentication off, see TRUSTED_PROXIES) receives from one server at
    once; one more is refused TOO_MANY_CLIENT_DOWNLOADS with a retry hint, so a client cannot
    take every place of VIDEO_DOWNLOAD_MAX_CONCURRENT."""
    video_download_stall_timeout_s: float = 30.0
    """VIDEO_DOWNLOAD_STALL_TIMEOUT_S: the longest one message of a GetVideo stream may wait to
    be sent (gRPC's flow control holds it while the client reads nothing); past it the stream
    is cut: its storage read closed, DOWNLOAD_STALLED queued behind what the client has not
    taken. Its place is given back when the call ends (the client reads on or goes away).
    Below Envoy's 60 s stream idle timeout, so the server cuts first."""

    @model_validator(mode="after")
    def _check_downloads(self) -> Self:
        if (
            not 1
            <= self.video_download_max_concurrent_per_client
            <= self.video_download_max_concurrent
        ):
            raise ConfigError(
                "need 1 <= VIDEO_DOWNLOAD_MAX_CONCURRENT_PER_CLIENT <= "
                "VIDEO_DOWNLOAD_MAX_CONCURRENT"
            )
        if self.video_download_stall_timeout_s <= 0:
            raise ConfigError("VIDEO_DOWNLOAD_STALL_TIMEOUT_S must be positive")
        return self


# --- The relay's sections -----------------------------------------------------------------------


class KafkaSection(Section, KafkaSecurity):
    """Kafka.

    The brokers of the events' topic (the relay writes it) and of the status topic (servers
    and relays write and read it), and how each process authenticates: the detection runner
    reads KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CAFILE alike
    ([relay.md](relay.md#authenticated-kafka))."""

    kafka_bootstrap_servers: str = "kafka:9092"
    """KAFKA_BOOTSTRAP_SERVERS: the brokers."""
    kafka_topic_partitions: int = 3
    """KAFKA_TOPIC_PARTITIONS: used when a process creates a missing topic."""
    kafka_replication_factor: int = 1
    """KAFKA_REPLICATION_FACTOR: used when a process creates a missing topic."""
    status_topic: Annotated[str, EnvRule.KEEP_EMPTY] = DEFAULT_STATUS_TOPIC
    """STATUS_TOPIC: where every status change is announced, so each server's watchers learn
    of it without a database query (docs/status.md, Watching); the detection runner announces
    its results there too. Records are kept an hour: servers read it from its end. Empty:
    none; watchers then poll the database, woken as WATCH_WAKE_TARGETS say."""
    status_send_timeout_s: float = 5.0
    """STATUS_SEND_TIMEOUT_S: the longest a batch of announcements may take; past it they are
    given up and the servers are woken to read the database instead. Also the longest a
    stopping process spends sending what it still has queued."""


class RelaySection(Section):
    """The outbox relay.

    checkout-relay's own settings; every relay of a deployment must agree on RELAY_SHARDS."""

    kafka_topic: str = "checkout.videos.v1"
    """KAFKA_TOPIC: the topic of the events."""
    kafka_linger_ms: int = 5
    """KAFKA_LINGER_MS: how long the producer waits to fill a batch."""

    relay_id: str = ""
    """RELAY_ID: this relay's name in leases and logs (default: host name and pid)."""
    relay_shards: int = 16
    """RELAY_SHARDS: events are hashed into this many shards; a relay publishes a shard only
    while it holds the shard's lease (so at most RELAY_SHARDS relays do useful work). Every
    relay of a deployment must have the same."""
    relay_lease_ttl_s: float = 10.0
    """RELAY_LEASE_TTL_S: a lease not renewed for this long may be taken over; renewed every
    third of it."""
    relay_clock_skew_s: float = 2.0
    """RELAY_CLOCK_SKEW_S: assumed worst clock difference between relays."""
    relay_batch_size: int = 500
    """RELAY_BATCH_SIZE: events claimed, published and marked per round trip (each batch costs
    FerretDB a few scans of the collections whatever its size, so larger batches drain a burst
    faster: docs/relay.md)."""
    relay_update_chunk: int = 50
    """RELAY_UPDATE_CHUNK: the most events one database update names (marking a batch takes
    ceil(RELAY_BATCH_SIZE / this) updates per collection). FerretDB over SQLite writes every
    document with a scan of the table, so large updates there outlast the socket timeout:
    keep 50; over PostgreSQL (or MongoDB) set it to RELAY_BATCH_SIZE (devstack does)."""
    relay_poll_interval_s: float = 2.0
    """RELAY_POLL_INTERVAL_S: the safety net: the longest an idle relay waits before looking
    again without a wake-up (RELAY_WAKE_ADDR). New events normally come with one, so this bounds
    only the pick-up of events whose writer sent none or whose wake-up was lost; without
    wake-ups (`off`) it polls at once after a batch and backs off from 10 ms to this."""
    relay_wake_addr: str = ""
    """RELAY_WAKE_ADDR: where the relay receives wake-ups (UDP datagrams from the servers, one
    per new outbox message; see RELAY_WAKE_TARGETS); empty (the default): the host and port of
    RELAY_HEALTH_ADDR, over UDP (only with WAKE_SECRET); `off`: none, the relay polls."""
    relay_wake_min_gap_s: float = 0.05
    """RELAY_WAKE_MIN_GAP_S: the least time between the starts of two looks for new events that
    wake-ups cause, however many arrive (a burst of uploads, or a flood)."""
    relay_backoff_initial_s: float = 0.5
    """RELAY_BACKOFF_INITIAL_S: first retry delay after a transient publish failure (doubling,
    with jitter, up to RELAY_BACKOFF_MAX_S; retried forever)."""
    relay_backoff_max_s: float = 10.0
    """RELAY_BACKOFF_MAX_S: the longest retry delay after a transient publish failure."""
    relay_send_timeout_s: float = 15.0
    """RELAY_SEND_TIMEOUT_S: our bound on a batch's send/flush/stop (aiokafka's idempotent
    producer has none of its own); past it the producer is recreated."""
    relay_sent_retention_s: float = 0.0
    """RELAY_SENT_RETENTION_S: how long `sent` outbox messages stay (then the sweeper deletes
    them); 0 (the default): they are deleted as they are marked, one delete per batch. Their
    status records keep everything a client sees, `sent_at` included, so this only bounds the
    outbox, which every relay poll reads: FerretDB 1.24 uses no index for it, so each poll and
    each write costs time in proportion to the collection (docs/relay.md). Set it to look at
    sent messages while debugging."""
    relay_sweep_interval_s: float = 5.0
    """RELAY_SWEEP_INTERVAL_S: how often the sweeper runs (only with RELAY_SENT_RETENTION_S
    above 0: otherwise there is no sweeper)."""
    relay_sweep_batch: int = 1_000
    """RELAY_SWEEP_BATCH: outbox messages the sweeper deletes at a time."""
    relay_health_addr: str = "0.0.0.0:50052"
    """RELAY_HEALTH_ADDR: the relay's gRPC health service."""
    relay_metrics_addr: Annotated[str, EnvRule.KEEP_EMPTY] = "127.0.0.1:9464"
    """RELAY_METRICS_ADDR: Prometheus text metrics over HTTP (`GET /metrics`), on loopback by
    default (compose sets `0.0.0.0:9464`); set but empty disables them."""

    @model_validator(mode="after")
    def _check_relay(self) -> Self:
        if not 1 <= self.relay_shards <= SLOTS:
            raise ConfigError(f"RELAY_SHARDS must be between 1 and {SLOTS}")
        if self.relay_lease_ttl_s <= 2 * self.relay_clock_skew_s:
            raise ConfigError("RELAY_LEASE_TTL_S must be more than twice RELAY_CLOCK_SKEW_S")
        if self.relay_batch_size < 1 or self.relay_sweep_batch < 1:
            raise ConfigError("RELAY_BATCH_SIZE and RELAY_SWEEP_BATCH must be positive")
        if self.relay_update_chunk < 1:
            raise ConfigError("RELAY_UPDATE_CHUNK must be positive")
        if self.relay_poll_interval_s <= 0 or self.relay_send_timeout_s <= 0:
            raise ConfigError("RELAY_POLL_INTERVAL_S and RELAY_SEND_TIMEOUT_S must be positive")
        if not 0 < self.relay_backoff_initial_s <= self.relay_backoff_max_s:
            raise ConfigError("need 0 < RELAY_BACKOFF_INITIAL_S <= RELAY_BACKOFF_MAX_S")
        if not 0 <= self.relay_wake_min_gap_s <= self.relay_poll_interval_s:
            raise ConfigError("need 0 <= RELAY_WAKE_MIN_GAP_S <= RELAY_POLL_INTERVAL_S")
        return self


# --- The processes' settings --------------------------------------------------------------------


class ProcessSettings(EnvSettings):
    """What every process's settings class shares: the environment rules of
    checkout_common.settings (`from_env`, `replace`), with the server's ConfigError."""

    config_error = ConfigError


def upload_commit_gap_s(mongo_timeout_ms: int) -> float:
    """The longest an UploadVideo takes from its object's completion to knowing whether its
    event was written; after it, an object without an event never gets one. Each database
    call is counted as two attempts (PyMongo retries once), each a server selection of
    MONGO_TIMEOUT_MS and an answer awaited for twice that: the outbox insert (one call), then,
    when it got no answer, LOST_INSERT_CHECK_S of asking for the event and the last of those
    questions (two reads: the status record, the outbox message)."""
    call_s = 2 * 3 * mongo_timeout_ms / 1000
    return call_s + _pipeline.LOST_INSERT_CHECK_S + 2 * call_s


ORPHAN_AGE_SLACK_S = 10.0


def is_loopback(address: str) -> bool:
    """Whether a gRPC listening address (`host:port`, `[v6]:port`, `unix:path`) is reachable
    from this machine only: a loopback IP, `localhost`, or a Unix socket."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or nothing (all interfaces): not known to be loopback
        return False


class ServerSettings(
    ProcessSettings,
    GrpcSection,
    AuthSection,
    StorageSection,
    MongoSection,
    UploadSection,
    ResumableSection,
    StatusSection,
    DownloadSection,
    MetricsSection,
    KafkaSection,
    OutboxWakeSection,
    WatchWakeSection,
    StartupSection,
    LoggingSection,
    TracingSection,
):
    """The server's (`checkout-server`) settings."""

    @model_validator(mode="after")
    def _check_relay_wake(self) -> Self:
        if self.relay_wake_targets and not self.wake_secret:
            raise ConfigError("RELAY_WAKE_TARGETS needs WAKE_SECRET (wake-ups are signed)")
        return self

    @model_validator(mode="after")
    def _check_exposure(self) -> Self:
        if not (self.auth_enabled or self.insecure_public_without_auth) and not is_loopback(
            self.grpc_addr
        ):
            raise ConfigError(
                f"GRPC_ADDR {self.grpc_addr} is reachable from other machines and "
                "AUTH_ENABLED is off: anyone could upload and read every event and result. "
                "Turn AUTH_ENABLED on, listen on loopback (127.0.0.1), or set "
                "INSECURE_PUBLIC_WITHOUT_AUTH=true to accept that"
            )
        return self

    @model_validator(mode="after")
    def _check_orphan_age(self) -> Self:
        floor = upload_commit_gap_s(self.mongo_timeout_ms) + ORPHAN_AGE_SLACK_S
        if self.upload_orphan_object_age_s < floor:
            raise ConfigError(
                f"UPLOAD_ORPHAN_OBJECT_AGE_S must be at least {floor:g} s: an upload may take"
                f" {floor - ORPHAN_AGE_SLACK_S:g} s from its object to its event"
                " (LOST_INSERT_CHECK_S and three database calls at MONGO_TIMEOUT_MS), plus 10 s"
            )
        return self


class RelaySettings(
    ProcessSettings,
    RelaySection,
    KafkaSection,
    MongoSection,
    WatchWakeSection,
    StartupSection,
    LoggingSection,
    TracingSection,
):
    """The outbox relay's (`checkout-relay`) settings."""
