"""The runner's settings: one frozen object built from the environment in the entry point
(`RunnerSettings.from_env()`), read by the rules every process of checkout reads its settings
by (checkout_common.settings): every field reads the variable named after it, upper-cased
(`runner_sample_fps` <- RUNNER_SAMPLE_FPS), stripped; unset or blank keeps the default; a flag
that is neither true nor false is refused. The shared ones (MINIO_*, MONGO_*, KAFKA_*,
RESULT_KEY_TEMPLATE, RESULT_MAX_BYTES, DEFAULT_BUCKET, ALLOWED_BUCKETS) have the server's names,
defaults and meaning, so one
environment serves both; RESULT_KEY_TEMPLATE is checked by the server's rule
(checkout_common.result_key).
`<NAME>_FILE` names a file that holds a secret (MINIO_ACCESS_KEY, MINIO_SECRET_KEY,
MONGO_URI, KAFKA_SASL_PASSWORD) and wins over the plain variable. How it authenticates to
Kafka (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_CAFILE) is the relay's section
(checkout_common.kafka_security), checked by the same rules.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import ValidationInfo, field_validator, model_validator

from checkout_common import result_key as result_keys
from checkout_common.kafka_security import KafkaSecurity
from checkout_common.settings import EnvRule, EnvSettings, Flag, Names, Secret
from checkout_common.status_message import DEFAULT_TOPIC as DEFAULT_STATUS_TOPIC

from .domain import DecodeLimits
from .errors import ConfigError

MiB = 1024 * 1024
GiB = 1024 * MiB


class RunnerSettings(EnvSettings, KafkaSecurity):
    config_error = ConfigError

    minio_endpoint: str = "minio:9000"
    """MINIO_ENDPOINT: the object storage of the videos and results."""
    minio_access_key: Secret = "minioadmin"
    """MINIO_ACCESS_KEY: its access key (secret)."""
    minio_secret_key: Secret = "minioadmin"
    """MINIO_SECRET_KEY: its secret key (secret)."""
    minio_secure: Flag = False
    """MINIO_SECURE: HTTPS."""
    mongo_uri: Secret = "mongodb://mongo:27017/"
    """MONGO_URI: the MongoDB of the runner's state collection (secret)."""
    mongo_db: str = "main_db"
    """MONGO_DB: its database (the server's)."""
    mongo_timeout_ms: int = 5_000
    """MONGO_TIMEOUT_MS: server selection and socket timeout."""
    kafka_bootstrap_servers: str = "kafka:9092"
    """KAFKA_BOOTSTRAP_SERVERS: the relay's Kafka."""
    kafka_topic: str = "checkout.videos.v1"
    """KAFKA_TOPIC: the relay's topic."""
    status_topic: Annotated[str, EnvRule.KEEP_EMPTY] = DEFAULT_STATUS_TOPIC
    """STATUS_TOPIC: where each result written is announced, so the servers' watchers see it
    at once (the servers' setting); empty: none, the servers find results by looking."""
    default_bucket: str = "videos"
    """DEFAULT_BUCKET: the server's bucket for uploads that name none (the server's setting);
    always allowed."""
    allowed_buckets: Names = frozenset({"videos"})
    """ALLOWED_BUCKETS: comma-separated buckets a record may name (the server's setting, the
    default bucket always added): a record naming another is refused, nothing read or
    written for it."""
    result_max_bytes: int = 3 * MiB
    """RESULT_MAX_BYTES: the largest result the server returns (the server's setting):
    detection stops before the result JSON would grow past it (the result says
    `truncated`)."""
    result_key_template: str = result_keys.DEFAULT_TEMPLATE
    """RESULT_KEY_TEMPLATE: where results go in the event's bucket (the server's setting;
    `{video_id}` and `{event_id}` are replaced)."""

    runner_id: str = ""
    """RUNNER_ID: this member's name in logs and state records (default: host name and pid)."""
    runner_group_id: str = "checkout-runner"
    """RUNNER_GROUP_ID: the Kafka consumer group; runners of one group share the partitions."""
    runner_state_collection: str = "runner_videos"
    """RUNNER_STATE_COLLECTION: the runner's own records (processing, predictable, ready)."""
    runner_detector: Literal["centerface", "hog-people"] = "centerface"
    """RUNNER_DETECTOR: centerface (faces, 5 landmarks) or hog-people (OpenCV's HOG)."""
    runner_score_threshold: float = 0.5
    """RUNNER_SCORE_THRESHOLD: the least score a detection needs."""
    runner_detect_max_side_px: int = 1280
    """RUNNER_DETECT_MAX_SIDE_PX: frames whose longer side is larger are scaled down to it by
    the decoder (boxes in the full frame's pixels all the same); 0: full size. Bounds the CPU
    and memory per frame (a 4K frame has nine times the pixels of a 1280x720 one)."""
    runner_detect_batch: int = 1
    """RUNNER_DETECT_BATCH: sampled frames run through the detector at once. On the CPU a
    batch costs as much per frame as one frame (docs/runner.md, "Measured"); a GPU provider
    gains from more."""
    runner_onnx_provider: str = "CPUExecutionProvider"
    """RUNNER_ONNX_PROVIDER: the onnxruntime execution provider of CenterFace
    (CUDAExecutionProvider with the onnxruntime-gpu wheel: docs/runner.md, "Detectors")."""
    runner_max_detections_per_frame: int = 100
    """RUNNER_MAX_DETECTIONS_PER_FRAME: the most a frame reports, highest scores first."""
    runner_max_frame_pixels: int = 4096 * 2160
    """RUNNER_MAX_FRAME_PIXELS: videos with larger frames (width x height) are refused
    (VIDEO_FRAME_TOO_LARGE); the default, 4096 x 2160, takes 4K UHD and DCI 4K."""
    runner_max_duration_s: float = 4 * 3600.0
    """RUNNER_MAX_DURATION_S: longer videos are refused (VIDEO_TOO_LONG); the default is 4 h."""
    runner_max_fps: float = 240.0
    """RUNNER_MAX_FPS: videos at a higher frame rate are refused (VIDEO_FRAME_RATE_TOO_HIGH)."""
    runner_max_frames_per_sample: int = 500
    """RUNNER_MAX_FRAMES_PER_SAMPLE: frames decoded between two samples before the video is
    refused (VIDEO_TOO_MANY_FRAMES: timestamps that do not advance, a rate the container
    hides). At least RUNNER_MAX_FPS / RUNNER_SAMPLE_FPS."""
    runner_decode_memory_bytes: int = 1 * GiB
    """RUNNER_DECODE_MEMORY_BYTES: the address space of the process that decodes one video
    (DECODE_MEMORY_EXCEEDED); a 4K H.264 video needs about 400 MiB."""
    runner_decode_cpu_s: int = 1800
    """RUNNER_DECODE_CPU_S: CPU seconds that process may use (DECODE_CPU_EXCEEDED)."""
    runner_video_timeout_s: float = 3600.0
    """RUNNER_VIDEO_TIMEOUT_S: wall clock from opening a video to its last sample detected
    (DECODE_TIMEOUT)."""
    runner_sample_fps: float = 2.0
    """RUNNER_SAMPLE_FPS: frames per second of video that are run through the detector."""
    runner_concurrency: int = 1
    """RUNNER_CONCURRENCY: videos processed at once (each in a worker thread of its own)."""
    runner_threads_per_video: int = 1
    """RUNNER_THREADS_PER_VIDEO: FFmpeg, onnxruntime and OpenCV threads per video being processed
    (0: as many as they choose)."""
    runner_max_video_bytes: int = 4 * GiB
    """RUNNER_MAX_VIDEO_BYTES: larger videos get a failure result (the server's upload limit)."""
    runner_max_sampled_frames: int = 20_000
    """RUNNER_MAX_SAMPLED_FRAMES: detection stops after this many frames (bounds the result:
    about 3 hours at 2 frames/s); the result says it was cut (`truncated`)."""
    runner_temp_dir: str = ""
    """RUNNER_TEMP_DIR: where videos are downloaded (default: the system's temp folder)."""
    runner_max_attempts: int = 3
    """RUNNER_MAX_ATTEMPTS: unexpected errors of one event before it gets a failure result
    (storage, database and Kafka outages are retried without limit)."""
    runner_retry_initial_s: float = 0.5
    """RUNNER_RETRY_INITIAL_S: first retry delay after an outage (doubling, capped)."""
    runner_retry_max_s: float = 30.0
    """RUNNER_RETRY_MAX_S: the longest retry delay."""
    runner_metrics_addr: Annotated[str, EnvRule.KEEP_EMPTY] = "127.0.0.1:9465"
    """RUNNER_METRICS_ADDR: the Prometheus endpoint (GET /metrics), on loopback by default (the
    image and compose set `0.0.0.0:9465`); set but empty disables it."""
    runner_lag_interval_s: float = 5.0
    """RUNNER_LAG_INTERVAL_S: how often the consumer lag gauge is measured."""
    kafka_session_timeout_ms: int = 10_000
    """KAFKA_SESSION_TIMEOUT_MS: a member silent this long (killed) loses its partitions."""
    kafka_max_poll_interval_ms: int = 600_000
    """KAFKA_MAX_POLL_INTERVAL_MS: the longest a batch may take before the group drops this
    member (one batch is RUNNER_CONCURRENCY videos); also how long a rebalance waits for a
    member to finish its batch (the rebalance timeout)."""
    otel_exporter_otlp_endpoint: str = ""
    """OTEL_EXPORTER_OTLP_ENDPOINT: where spans go over OTLP/gRPC; empty: not exported."""
    log_level: str = "INFO"
    """LOG_LEVEL: the lowest level logged."""
    log_format: str = ""
    """LOG_FORMAT: json | console (default: console on a terminal, else json)."""

    @field_validator("allowed_buckets")
    @classmethod
    def _add_default_bucket(cls, buckets: frozenset[str], info: ValidationInfo) -> frozenset[str]:
        default = info.data.get("default_bucket")
        return buckets | {default} if default else buckets

    @field_validator("result_key_template")
    @classmethod
    def _check_template(cls, template: str) -> str:
        return result_keys.check_template(template)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.runner_sample_fps <= 0:
            raise ValueError("RUNNER_SAMPLE_FPS must be positive")
        if self.runner_lag_interval_s <= 0:
            raise ValueError("RUNNER_LAG_INTERVAL_S must be positive")
        for name in (
            "runner_concurrency",
            "runner_max_attempts",
            "runner_max_sampled_frames",
            "runner_detect_batch",
            "runner_max_detections_per_frame",
            "result_max_bytes",
            "runner_max_frame_pixels",
            "runner_max_frames_per_sample",
            "runner_decode_memory_bytes",
            "runner_decode_cpu_s",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be at least 1")
        for name in ("runner_max_duration_s", "runner_max_fps", "runner_video_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.upper()} must be positive")
        if self.runner_max_fps / self.runner_sample_fps > self.runner_max_frames_per_sample:
            raise ValueError(
                "RUNNER_MAX_FRAMES_PER_SAMPLE must be at least RUNNER_MAX_FPS / "
                "RUNNER_SAMPLE_FPS, or videos within the limits are refused"
            )
        if self.runner_detect_max_side_px < 0:
            raise ValueError("RUNNER_DETECT_MAX_SIDE_PX must be 0 (full size) or more")
        if self.runner_threads_per_video < 0:
            raise ValueError("RUNNER_THREADS_PER_VIDEO must be 0 (FFmpeg chooses) or more")
        if not 0 < self.runner_retry_initial_s <= self.runner_retry_max_s:
            raise ValueError("need 0 < RUNNER_RETRY_INITIAL_S <= RUNNER_RETRY_MAX_S")
        return self

    @property
    def member_id(self) -> str:
        return self.runner_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_frame_pixels=self.runner_max_frame_pixels,
            max_duration_s=self.runner_max_duration_s,
            max_fps=self.runner_max_fps,
            max_frames_per_sample=self.runner_max_frames_per_sample,
            memory_bytes=self.runner_decode_memory_bytes,
            cpu_s=self.runner_decode_cpu_s,
            timeout_s=self.runner_video_timeout_s,
            detect_max_side_px=self.runner_detect_max_side_px,
        )

    @property
    def temp_dir(self) -> Path | None:
        return Path(self.runner_temp_dir) if self.runner_temp_dir else None

    def result_key(self, *, video_id: str, event_id: str) -> str:
        return result_keys.result_key(
            self.result_key_template, video_id=video_id, event_id=event_id
        )


# The fields that may come from `<NAME>_FILE` (their defaults are not shown in docs/runner.md).
SECRETS = tuple(
    name for name, field in RunnerSettings.model_fields.items() if EnvRule.SECRET in field.metadata
)
