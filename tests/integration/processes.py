"""Environment of a checkout server run as a real process by a test."""

from __future__ import annotations

import os

from checkout_server.config import MiB, ServerSettings


def server_env(settings: ServerSettings, port: int, **extra: str) -> dict[str, str]:
    """The variables that make `python -m checkout_server` match `settings` on `port`."""
    return {
        **os.environ,
        "GRPC_ADDR": f"127.0.0.1:{port}",
        "MINIO_ENDPOINT": settings.minio_endpoint,
        "MONGO_URI": settings.mongo_uri,
        "MONGO_DB": settings.mongo_db,
        "DEFAULT_BUCKET": settings.default_bucket,
        "ALLOWED_BUCKETS": ",".join(settings.allowed_buckets),
        "UPLOAD_PART_BYTES": str(5 * MiB),
        "LOG_FORMAT": "json",
        "METRICS_ADDR": "127.0.0.1:0",  # several servers at once
        "SHUTDOWN_DRAIN_S": "0",  # no load balancer to turn away (test_shutdown sets one)
        **extra,
    }
