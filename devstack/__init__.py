"""Dev-only stack: install and run real servers for local runs and integration tests.

Not part of the shipped distribution. Everything lives under ``<repo>/.stack``
(git-ignored): binaries in ``bin/``, Kafka jars in ``kafka/libs``, logs in ``logs/``.

    python -m devstack install     # idempotent installs
    python -m devstack selfcheck   # start/stop FerretDB, MinIO, Kafka, toxiproxy once, timed
"""

from __future__ import annotations

from ._envoy import Envoy, envoy_binary, validate_envoy_config
from ._install import GO_TOOLS, InstallError, install_all, tool_path
from ._paths import LOG_DIR, REPO_ROOT, STACK_DIR
from ._process import ServerError, ServerProcess, free_port, port_open
from ._servers import FerretDB, Kafka, KafkaAcl, MinIO, PostgreSQL, kafka_broker_registered
from ._toxiproxy import (
    Proxy,
    Toxic,
    Toxiproxy,
    ToxiproxyClient,
    ToxiproxyError,
    bandwidth,
    latency,
    limit_data,
    reset_peer,
    timeout,
)

__all__ = [
    "GO_TOOLS",
    "LOG_DIR",
    "REPO_ROOT",
    "STACK_DIR",
    "Envoy",
    "FerretDB",
    "InstallError",
    "Kafka",
    "KafkaAcl",
    "MinIO",
    "PostgreSQL",
    "Proxy",
    "ServerError",
    "ServerProcess",
    "Toxic",
    "Toxiproxy",
    "ToxiproxyClient",
    "ToxiproxyError",
    "bandwidth",
    "envoy_binary",
    "free_port",
    "install_all",
    "kafka_broker_registered",
    "latency",
    "limit_data",
    "port_open",
    "reset_peer",
    "timeout",
    "tool_path",
    "validate_envoy_config",
]
