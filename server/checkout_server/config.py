"""Service configuration: one frozen object, built from the environment in the entry point.

Every field documents its environment variable and default. Secrets may also come from a
file named by `<NAME>_FILE` (Docker/Kubernetes secrets), which wins over the plain variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
# S3 multipart limits: every part but the last is 5 MiB..5 GiB, at most 10,000 parts.
S3_MIN_PART_BYTES = 5 * MiB
S3_MAX_PART_BYTES = 5 * GiB
S3_MAX_PARTS = 10_000


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    # GRPC_ADDR: where the gRPC server listens.
    grpc_addr: str = "0.0.0.0:50051"
    # MINIO_ENDPOINT / MINIO_ACCESS_KEY / MINIO_SECRET_KEY / MINIO_SECURE: as in the seed service.
    minio_endpoint: str = "minio:9000"
    minio_access_key: str = "minioadmin"
    minio_secret_key: str = field(default="minioadmin", repr=False)
    minio_secure: bool = False
    # MONGO_URI / MONGO_DB / MONGO_OUTBOX_COLLECTION: the outbox (database name from the seed).
    mongo_uri: str = "mongodb://mongo:27017/"
    mongo_db: str = "main_db"
    mongo_outbox_collection: str = "outbox"
    # MONGO_STATUS_COLLECTION: one status record per event, kept after its outbox message
    # is swept (what ListStatuses/GetStatus/WatchStatus read).
    mongo_status_collection: str = "event_statuses"
    # MONGO_TIMEOUT_MS: server selection / socket timeout for MongoDB calls.
    mongo_timeout_ms: int = 5_000
    # KAFKA_BOOTSTRAP_SERVERS / KAFKA_TOPIC: where the relay publishes events.
    kafka_bootstrap_servers: str = "kafka:9092"
    kafka_topic: str = "checkout.videos.v1"
    # DEFAULT_BUCKET: used when a request names none. ALLOWED_BUCKETS: comma-separated
    # allow-list (the default bucket is always allowed); created at start-up.
    default_bucket: str = "videos"
    allowed_buckets: frozenset[str] = frozenset({"videos"})
    # UPLOAD_MAX_BYTES: the largest accepted video (default 4 GiB).
    upload_max_bytes: int = 4 * GiB
    # UPLOAD_PART_BYTES: S3 multipart part size; the server buffers about one part per upload.
    upload_part_bytes: int = 8 * MiB
    # STORAGE_ABORT_RETRY_S: how long a failed upload keeps retrying to abort its multipart
    # upload while storage is unreachable (in the background; the client is answered at once).
    storage_abort_retry_s: float = 300.0
    # UPLOAD_MEMORY_BUDGET_BYTES: what all uploads together may buffer (two parts each while
    # active); uploads beyond it wait for their turn, slowed down by gRPC flow control.
    upload_memory_budget_bytes: int = 256 * MiB
    # RESULT_KEY_TEMPLATE: where the detection runner writes its JSON result, in the bucket
    # of the video ({video_id} or {event_id}).
    result_key_template: str = "output/{video_id}.json"
    # RESULT_MAX_BYTES: the largest result GetResult returns (a gRPC message is at most 4 MiB).
    result_max_bytes: int = 3 * MiB
    # WATCH_POLL_INTERVAL_S: how often the process looks for status changes while watched.
    watch_poll_interval_s: float = 0.25
    # WATCH_RESULT_CHECK_INTERVAL_S: how often the events someone watches are checked for
    # their result (one storage request per watched event, not per watcher).
    watch_result_check_interval_s: float = 0.5
    # WATCH_HEARTBEAT_S: a watch stream with no change for this long gets a keep-alive message.
    watch_heartbeat_s: float = 15.0
    # WATCH_MAX_PENDING: changes a watcher may fall behind before it is asked to re-subscribe.
    watch_max_pending: int = 1000
    # RESULT_RECONCILE_INTERVAL_S: how often every event still waiting is checked for a result
    # (watched events are checked every WATCH_RESULT_CHECK_INTERVAL_S).
    result_reconcile_interval_s: float = 10.0
    # ADMIN_TOKEN (or ADMIN_TOKEN_FILE): bearer token for Cleanup; empty disables Cleanup.
    admin_token: str = field(default="", repr=False)
    # SHUTDOWN_GRACE_S: how long in-flight RPCs may finish after SIGTERM.
    shutdown_grace_s: float = 30.0
    # STARTUP_TIMEOUT_S: how long start-up waits for MinIO and MongoDB to answer.
    startup_timeout_s: float = 60.0
    # HEALTH_INTERVAL_S: how often dependencies are probed for the health service.
    health_interval_s: float = 5.0
    # LOG_LEVEL / LOG_FORMAT (json | console; default: console on a terminal, else json).
    log_level: str = "INFO"
    log_format: str = ""
    # --- The outbox relay (checkout-relay); every relay of a deployment must agree on
    # RELAY_SHARDS. KAFKA_TOPIC_PARTITIONS / KAFKA_REPLICATION_FACTOR: used when the relay
    # creates a missing topic.
    kafka_topic_partitions: int = 3
    kafka_replication_factor: int = 1
    # KAFKA_LINGER_MS: how long the producer waits to fill a batch.
    kafka_linger_ms: int = 5
    # RELAY_ID: this relay's name in leases and logs (default: host name and pid).
    relay_id: str = ""
    # RELAY_SHARDS: events are hashed into this many shards; a relay publishes a shard only
    # while it holds the shard's lease (so at most RELAY_SHARDS relays do useful work).
    relay_shards: int = 16
    # RELAY_LEASE_TTL_S: a lease not renewed for this long may be taken over; renewed every
    # third of it. RELAY_CLOCK_SKEW_S: assumed worst clock difference between relays.
    relay_lease_ttl_s: float = 10.0
    relay_clock_skew_s: float = 2.0
    # RELAY_BATCH_SIZE: events claimed, published and marked per round trip.
    relay_batch_size: int = 200
    # RELAY_POLL_INTERVAL_S: the longest an idle relay waits before looking again (it polls
    # at once after a full batch and backs off from 10 ms to this when idle). Each poll costs
    # about 2 ms of CPU on the 2-core test VM, so polling every 0.1 s alone took 2% of a core;
    # 0.2 s is the pick-up delay of an event that arrives at an idle relay.
    relay_poll_interval_s: float = 0.2
    # RELAY_BACKOFF_INITIAL_S / RELAY_BACKOFF_MAX_S: retry delay after a transient publish
    # failure (doubling, with full jitter, capped; retried forever).
    relay_backoff_initial_s: float = 0.5
    relay_backoff_max_s: float = 10.0
    # RELAY_SEND_TIMEOUT_S: our bound on a batch's send/flush/stop (aiokafka's idempotent
    # producer has none of its own); past it the producer is recreated.
    relay_send_timeout_s: float = 15.0
    # RELAY_SENT_RETENTION_S: `sent` outbox messages older than this are deleted by the sweeper
    # (default 1 hour; 0 disables), every RELAY_SWEEP_INTERVAL_S, RELAY_SWEEP_BATCH at a time.
    # Statuses live in their own records, so this only bounds the outbox (which every relay
    # poll reads: on FerretDB, which uses no index, its cost grows with the collection).
    relay_sent_retention_s: float = 3600.0
    relay_sweep_interval_s: float = 60.0
    relay_sweep_batch: int = 1_000
    # RELAY_HEALTH_ADDR: the relay's gRPC health service. RELAY_METRICS_ADDR: Prometheus text
    # metrics over HTTP (`GET /metrics`); empty disables.
    relay_health_addr: str = "0.0.0.0:50052"
    relay_metrics_addr: str = "0.0.0.0:9464"

    def __post_init__(self) -> None:
        if self.default_bucket not in self.allowed_buckets:
            object.__setattr__(
                self, "allowed_buckets", self.allowed_buckets | {self.default_bucket}
            )
        if not S3_MIN_PART_BYTES <= self.upload_part_bytes <= S3_MAX_PART_BYTES:
            raise ConfigError("UPLOAD_PART_BYTES must be between 5 MiB and 5 GiB")
        if self.upload_max_bytes > self.upload_part_bytes * S3_MAX_PARTS:
            raise ConfigError(
                "UPLOAD_MAX_BYTES needs more than 10,000 parts: raise UPLOAD_PART_BYTES"
            )
        head = self.result_key_template.split("{", 1)[0]
        if "/" not in head or not any(
            p in self.result_key_template for p in ("{video_id}", "{event_id}")
        ):
            raise ConfigError(
                "RESULT_KEY_TEMPLATE needs a folder and {video_id} or {event_id}, "
                "e.g. output/{video_id}.json"
            )
        if self.upload_memory_budget_bytes < 2 * self.upload_part_bytes:
            raise ConfigError("UPLOAD_MEMORY_BUDGET_BYTES must hold two parts (UPLOAD_PART_BYTES)")
        if self.upload_max_bytes <= 0:
            raise ConfigError("UPLOAD_MAX_BYTES must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; unset ones keep their defaults."""
        env = os.environ if env is None else env
        reader = _EnvReader(env)
        defaults = cls()
        buckets = reader.text("ALLOWED_BUCKETS", ",".join(sorted(defaults.allowed_buckets)))
        return cls(
            grpc_addr=reader.text("GRPC_ADDR", defaults.grpc_addr),
            minio_endpoint=reader.text("MINIO_ENDPOINT", defaults.minio_endpoint),
            minio_access_key=reader.secret("MINIO_ACCESS_KEY", defaults.minio_access_key),
            minio_secret_key=reader.secret("MINIO_SECRET_KEY", defaults.minio_secret_key),
            minio_secure=reader.flag("MINIO_SECURE", defaults.minio_secure),
            mongo_uri=reader.secret("MONGO_URI", defaults.mongo_uri),
            mongo_db=reader.text("MONGO_DB", defaults.mongo_db),
            mongo_outbox_collection=reader.text(
                "MONGO_OUTBOX_COLLECTION", defaults.mongo_outbox_collection
            ),
            mongo_status_collection=reader.text(
                "MONGO_STATUS_COLLECTION", defaults.mongo_status_collection
            ),
            mongo_timeout_ms=reader.integer("MONGO_TIMEOUT_MS", defaults.mongo_timeout_ms),
            kafka_bootstrap_servers=reader.text(
                "KAFKA_BOOTSTRAP_SERVERS", defaults.kafka_bootstrap_servers
            ),
            kafka_topic=reader.text("KAFKA_TOPIC", defaults.kafka_topic),
            default_bucket=reader.text("DEFAULT_BUCKET", defaults.default_bucket),
            allowed_buckets=frozenset(b.strip() for b in buckets.split(",") if b.strip()),
            upload_max_bytes=reader.integer("UPLOAD_MAX_BYTES", defaults.upload_max_bytes),
            upload_part_bytes=reader.integer("UPLOAD_PART_BYTES", defaults.upload_part_bytes),
            storage_abort_retry_s=reader.number(
                "STORAGE_ABORT_RETRY_S", defaults.storage_abort_retry_s
            ),
            upload_memory_budget_bytes=reader.integer(
                "UPLOAD_MEMORY_BUDGET_BYTES", defaults.upload_memory_budget_bytes
            ),
            result_key_template=reader.text("RESULT_KEY_TEMPLATE", defaults.result_key_template),
            result_max_bytes=reader.integer("RESULT_MAX_BYTES", defaults.result_max_bytes),
            watch_poll_interval_s=reader.number(
                "WATCH_POLL_INTERVAL_S", defaults.watch_poll_interval_s
            ),
            watch_result_check_interval_s=reader.number(
                "WATCH_RESULT_CHECK_INTERVAL_S", defaults.watch_result_check_interval_s
            ),
            watch_heartbeat_s=reader.number("WATCH_HEARTBEAT_S", defaults.watch_heartbeat_s),
            watch_max_pending=reader.integer("WATCH_MAX_PENDING", defaults.watch_max_pending),
            result_reconcile_interval_s=reader.number(
                "RESULT_RECONCILE_INTERVAL_S", defaults.result_reconcile_interval_s
            ),
            admin_token=reader.secret("ADMIN_TOKEN", defaults.admin_token),
            shutdown_grace_s=reader.number("SHUTDOWN_GRACE_S", defaults.shutdown_grace_s),
            startup_timeout_s=reader.number("STARTUP_TIMEOUT_S", defaults.startup_timeout_s),
            health_interval_s=reader.number("HEALTH_INTERVAL_S", defaults.health_interval_s),
            log_level=reader.text("LOG_LEVEL", defaults.log_level).upper(),
            log_format=reader.text("LOG_FORMAT", defaults.log_format).lower(),
            kafka_topic_partitions=reader.integer(
                "KAFKA_TOPIC_PARTITIONS", defaults.kafka_topic_partitions
            ),
            kafka_replication_factor=reader.integer(
                "KAFKA_REPLICATION_FACTOR", defaults.kafka_replication_factor
            ),
            kafka_linger_ms=reader.integer("KAFKA_LINGER_MS", defaults.kafka_linger_ms),
            relay_id=reader.text("RELAY_ID", defaults.relay_id),
            relay_shards=reader.integer("RELAY_SHARDS", defaults.relay_shards),
            relay_lease_ttl_s=reader.number("RELAY_LEASE_TTL_S", defaults.relay_lease_ttl_s),
            relay_clock_skew_s=reader.number("RELAY_CLOCK_SKEW_S", defaults.relay_clock_skew_s),
            relay_batch_size=reader.integer("RELAY_BATCH_SIZE", defaults.relay_batch_size),
            relay_poll_interval_s=reader.number(
                "RELAY_POLL_INTERVAL_S", defaults.relay_poll_interval_s
            ),
            relay_backoff_initial_s=reader.number(
                "RELAY_BACKOFF_INITIAL_S", defaults.relay_backoff_initial_s
            ),
            relay_backoff_max_s=reader.number("RELAY_BACKOFF_MAX_S", defaults.relay_backoff_max_s),
            relay_send_timeout_s=reader.number(
                "RELAY_SEND_TIMEOUT_S", defaults.relay_send_timeout_s
            ),
            relay_sent_retention_s=reader.number(
                "RELAY_SENT_RETENTION_S", defaults.relay_sent_retention_s
            ),
            relay_sweep_interval_s=reader.number(
                "RELAY_SWEEP_INTERVAL_S", defaults.relay_sweep_interval_s
            ),
            relay_sweep_batch=reader.integer("RELAY_SWEEP_BATCH", defaults.relay_sweep_batch),
            relay_health_addr=reader.text("RELAY_HEALTH_ADDR", defaults.relay_health_addr),
            # set but empty disables the endpoint, so not reader.text (empty means default)
            relay_metrics_addr=env.get("RELAY_METRICS_ADDR", defaults.relay_metrics_addr).strip(),
        )


@dataclass(frozen=True)
class _EnvReader:
    env: Mapping[str, str]

    def text(self, name: str, default: str) -> str:
        value = self.env.get(name, "").strip()
        return value or default

    def secret(self, name: str, default: str) -> str:
        path = self.env.get(f"{name}_FILE", "").strip()
        if path:
            try:
                return Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{name}_FILE: cannot read {path}: {exc}") from exc
        return self.text(name, default)

    def integer(self, name: str, default: int) -> int:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None

    def number(self, name: str, default: float) -> float:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
