"""The whole local stack: FerretDB, MinIO, Kafka, the checkout server, the outbox relay,
Envoy and (for `make run`) the detection runner, started in dependency order for `make run`
(fixed, documented ports) or for tests (free ports)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tools.render_envoy import render_envoy_config

from ._envoy import Envoy
from ._paths import REPO_ROOT, STACK_DIR
from ._process import ServerProcess, free_port, http_status
from ._servers import FerretDB, Kafka, MinIO

log = logging.getLogger(__name__)

DESCRIPTOR = REPO_ROOT / "build" / "checkout.pb"
OPENAPI = REPO_ROOT / "docs" / "openapi.yaml"
CONSOLE = REPO_ROOT / "build" / "console"  # the web console, built by `make console`


def grpc_serving(port: int, timeout_s: float = 1.0) -> bool:
    """True when the gRPC health service on `port` answers SERVING."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class PythonService(ServerProcess):
    """One of our own Python entry points (`python -m <module>`), configured by environment
    variables; ready when its gRPC health service answers SERVING."""

    def __init__(
        self, *, name: str, module: str, port: int, env: Mapping[str, str], log_path: Path
    ) -> None:
        super().__init__(name=name, port=port, log_path=log_path, env=env)
        self.module = module

    def _command(self) -> Sequence[str]:
        return [sys.executable, "-m", self.module]

    def _probe(self) -> bool:
        return grpc_serving(self.port)


class RunnerService(ServerProcess):
    """The detection runner (`python -m checkout_runner`); ready when its metrics endpoint
    answers (it then joins the consumer group: `checkout_runner_assigned_partitions`)."""

    def __init__(self, *, name: str, port: int, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(
            name=name,
            port=port,
            log_path=log_path,
            env={**env, "RUNNER_METRICS_ADDR": f"127.0.0.1:{port}"},
        )

    def _command(self) -> Sequence[str]:
        return [sys.executable, "-m", "checkout_runner"]

    def _probe(self) -> bool:
        return http_status(f"http://127.0.0.1:{self.port}/metrics") == 200


@dataclass(frozen=True)
class StackPorts:
    grpc: int = 50051
    rest: int = 8080
    envoy_admin: int = 9901
    mongo: int = 27017
    minio: int = 9000
    minio_console: int = 9001
    kafka: int = 9092
    kafka_controller: int = 9093
    relay_health: int = 50052
    relay_metrics: int = 9464
    metrics: int = 9463
    runner_metrics: int = 9465

    @classmethod
    def free(cls) -> StackPorts:
        return cls(*(free_port() for _ in fields(cls)))


@dataclass
class LocalStack:
    """Every server of the local stack, under `data_dir`."""

    data_dir: Path
    ports: StackPorts = field(default_factory=StackPorts)
    app_env: Mapping[str, str] = field(default_factory=dict)
    # The detection runner makes events `ready`; tests of the rest keep them `sent`.
    with_runner: bool = False
    # What the stack's server and relay sign their wake-ups with: new for each stack.
    wake_secret: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

    def __post_init__(self) -> None:
        d, p = self.data_dir, self.ports
        logs = d / "logs"
        self.ferretdb = FerretDB(
            port=p.mongo, data_dir=d / "ferretdb", log_path=logs / "ferretdb.log"
        )
        self.minio = MinIO(
            port=p.minio,
            console_port=p.minio_console,
            data_dir=d / "minio",
            log_path=logs / "minio.log",
        )
        self.kafka = Kafka(
            port=p.kafka,
            controller_port=p.kafka_controller,
            data_dir=d / "kafka",
            log_path=logs / "kafka.log",
        )
        self.server = PythonService(
            name="checkout-server",
            module="checkout_server",
            port=p.grpc,
            # Wake-ups go to the relay's health port, over UDP (its RELAY_WAKE_ADDR default).
            env={**self.environment(), "RELAY_WAKE_TARGETS": f"127.0.0.1:{p.relay_health}"},
            log_path=logs / "checkout-server.log",
        )
        # The outbox relay; ready when its gRPC health service answers SERVING.
        self.relay = PythonService(
            name="checkout-relay",
            module="checkout_server.wiring.relay",
            port=p.relay_health,
            env={
                **self.environment(),
                "RELAY_HEALTH_ADDR": f"127.0.0.1:{p.relay_health}",
                "RELAY_METRICS_ADDR": f"127.0.0.1:{p.relay_metrics}",
                # Wake-ups for the server's watchers: its gRPC port, over UDP (WATCH_WAKE_ADDR).
                "WATCH_WAKE_TARGETS": f"127.0.0.1:{p.grpc}",
                # Over PostgreSQL FerretDB writes by index: a batch in one update (any batch
                # size up to 1000).
                **({"RELAY_UPDATE_CHUNK": "1000"} if self.ferretdb.backend == "postgresql" else {}),
            },
            log_path=logs / "checkout-relay.log",
        )
        self.runner = RunnerService(
            name="checkout-runner",
            port=p.runner_metrics,
            env=self.environment(),
            log_path=logs / "checkout-runner.log",
        )
        config = render_envoy_config(
            d / "envoy.yaml",
            listen_port=p.rest,
            admin_port=p.envoy_admin,
            upstream_port=p.grpc,
            descriptor=DESCRIPTOR,
            openapi=OPENAPI,
            console=CONSOLE,
        )
        self.envoy = Envoy(
            config_path=config,
            admin_port=p.envoy_admin,
            cwd=REPO_ROOT,
            log_path=logs / "envoy.log",
        )

    def environment(self) -> dict[str, str]:
        """The environment our services run with: the seed's variables plus ours."""
        p = self.ports
        env = {
            "GRPC_ADDR": f"127.0.0.1:{p.grpc}",
            "METRICS_ADDR": f"127.0.0.1:{p.metrics}",
            "MINIO_ENDPOINT": f"127.0.0.1:{p.minio}",
            "MINIO_ACCESS_KEY": "minioadmin",
            "MINIO_SECRET_KEY": "minioadmin",
            "MONGO_URI": f"mongodb://127.0.0.1:{p.mongo}/",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{p.kafka}",
            "WAKE_SECRET": self.wake_secret,
            # Envoy, in front on this host: its x-forwarded-for names the REST clients.
            "TRUSTED_PROXIES": "127.0.0.1",
        }
        env.update(self.app_env)
        return env

    def start(self) -> None:
        """Backends in parallel, then the server, then Envoy in front of it."""
        backends: list[ServerProcess] = [self.ferretdb, self.minio, self.kafka]
        with ThreadPoolExecutor(len(backends)) as pool:
            for future in [pool.submit(s.start, 120) for s in backends]:
                future.result()
        self.server.start(timeout_s=60)
        self.relay.start(timeout_s=60)  # creates the topic, with its partitions
        if self.with_runner:
            self.runner.start(timeout_s=60)
        self.envoy.start(timeout_s=60)

    def stop(self) -> None:
        for server in (
            self.envoy,
            self.runner,
            self.relay,
            self.server,
            self.kafka,
            self.minio,
            self.ferretdb,
        ):
            server.stop()

    def endpoints(self) -> str:
        p = self.ports
        return "\n".join(
            [
                f"  gRPC        127.0.0.1:{p.grpc}   (grpcurl -plaintext 127.0.0.1:{p.grpc} list)",
                f"  console     http://127.0.0.1:{p.rest}/   (in a browser: docs/console.md)",
                f"  REST        http://127.0.0.1:{p.rest}/api/health   (Envoy; gRPC, grpc-web too)",
                f"  Envoy admin http://127.0.0.1:{p.envoy_admin}/",
                f"  MongoDB     mongodb://127.0.0.1:{p.mongo}/"
                f"   (FerretDB over {self.ferretdb.backend})",
                f"  MinIO       http://127.0.0.1:{p.minio}   (minioadmin / minioadmin)",
                f"  MinIO UI    http://127.0.0.1:{p.minio_console}",
                f"  Kafka       127.0.0.1:{p.kafka}",
                f"  metrics     server http://127.0.0.1:{p.metrics}/metrics, "
                f"relay http://127.0.0.1:{p.relay_metrics}/metrics"
                + (
                    f", runner http://127.0.0.1:{p.runner_metrics}/metrics"
                    if self.with_runner
                    else ""
                ),
                f"  logs        {self.data_dir / 'logs'}",
            ]
        )


def run_foreground(data_dir: Path | None = None) -> int:
    """`make run`: start everything on the documented ports, wait for Ctrl-C or SIGTERM,
    stop everything."""
    stack = LocalStack(
        data_dir or STACK_DIR / "run", app_env={"LOG_FORMAT": "json"}, with_runner=True
    )
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        print(
            "starting FerretDB, MinIO, Kafka, checkout-server, checkout-relay, checkout-runner,"
            " Envoy ...",
            flush=True,
        )
        stack.start()
        print(
            f"checkout is up (pid {os.getpid()}); Ctrl-C stops everything:\n{stack.endpoints()}",
            flush=True,
        )
        stopping.wait()
    finally:
        print("stopping ...", flush=True)
        stack.stop()
    return 0
