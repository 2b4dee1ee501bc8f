"""What a soak run starts, once: the backends (FerretDB, MinIO, Kafka) with a toxiproxy proxy in
front of each, and the system under test (two checkout servers, three relays and one Envoy in
front of both servers, all real processes) in a namespace of its own (a database, a topic, a
bucket per scenario), reaching every backend through its proxy. Every process is restartable
on the same ports."""

from __future__ import annotations

import os
import secrets
import signal
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from devstack import (
    Envoy,
    FerretDB,
    Kafka,
    MinIO,
    Proxy,
    ServerProcess,
    Toxiproxy,
    ToxiproxyClient,
    free_port,
)
from devstack._paths import REPO_ROOT
from devstack._stack import DESCRIPTOR, OPENAPI, PythonService
from tools.render_envoy import render_envoy_config

MiB = 1024 * 1024
# The backends a toxic can come between the system and: the proxies' names.
BACKENDS = ("mongo", "minio", "kafka")
SERVER_GRACE_S = 5.0  # SHUTDOWN_GRACE_S of the soak's server
SERVER_DRAIN_S = 1.0  # SHUTDOWN_DRAIN_S: new calls refused SHUTTING_DOWN before the grace
# UPLOAD_ORPHAN_OBJECT_AGE_S of the soak's servers: the least their settings allow (their
# MONGO_TIMEOUT_MS is the default 5 s), so that the object a kill -9 leaves between its
# completion and its event is swept before the audit gives up (kill-server).
SERVER_ORPHAN_AGE_S = 130.0
# What the servers and relays sign their wake-ups with: new for each run.
WAKE_SECRET = secrets.token_hex(16)
SERVER_SWEEP_INTERVAL_S = 10.0  # UPLOAD_SWEEP_INTERVAL_S (a page of every bucket per round)


@dataclass(frozen=True)
class Namespace:
    """The run's own database and Kafka topic, and a bucket of its own for each scenario: the
    auditor of a scenario looks at its bucket, and at the events and records of its videos."""

    database: str
    topic: str
    buckets: tuple[tuple[str, str], ...]  # (scenario, bucket)

    @classmethod
    def new(cls, scenarios: Iterable[str]) -> Namespace:
        suffix = uuid.uuid4().hex[:8]
        return cls(
            database=f"soak_{suffix}",
            topic=f"soak.{suffix}",
            buckets=tuple((name, f"soak-{suffix}-{name}") for name in scenarios),
        )

    def bucket(self, scenario: str) -> str:
        return dict(self.buckets)[scenario]


class Backends:
    """FerretDB, MinIO and Kafka under `work`, and toxiproxy with one proxy in front of each
    (`mongo`, `minio`, `kafka`). Kafka's second listener is advertised at its proxy, so the
    relay's producer stays behind the proxy after the bootstrap; the auditor reaches every
    backend directly."""

    def __init__(self, work: Path) -> None:
        logs = work / "logs"
        self.work = work
        self.toxiproxy = Toxiproxy(port=free_port(), log_path=logs / "toxiproxy.log")
        self.ferretdb = FerretDB(
            port=free_port(), data_dir=work / "ferretdb", log_path=logs / "ferretdb.log"
        )
        self.minio = MinIO(
            port=free_port(),
            console_port=free_port(),
            data_dir=work / "minio",
            log_path=logs / "minio.log",
        )
        self._kafka_proxied_port = free_port()
        self.kafka: Kafka | None = None
        self.proxies: dict[str, Proxy] = {}
        self.api: ToxiproxyClient = self.toxiproxy.client()

    def start(self) -> None:
        self.toxiproxy.start(30)
        upstreams = {
            "mongo": f"127.0.0.1:{self.ferretdb.port}",
            "minio": f"127.0.0.1:{self.minio.port}",
            "kafka": f"127.0.0.1:{self._kafka_proxied_port}",
        }
        for name, upstream in upstreams.items():
            self.proxies[name] = self.api.create_proxy(name, upstream=upstream)
        self.kafka = Kafka(
            port=free_port(),
            controller_port=free_port(),
            data_dir=self.work / "kafka",
            log_path=self.work / "logs" / "kafka.log",
            proxied_listener=(self._kafka_proxied_port, self.proxies["kafka"].port),
        )
        kafka = self.kafka
        with ThreadPoolExecutor(3) as pool:
            starts = [
                pool.submit(self.ferretdb.start, 120),
                pool.submit(self.minio.start, 120),
                pool.submit(kafka.start, 180),
            ]
            for future in starts:
                future.result()

    def stop(self) -> None:
        for server in (self.kafka, self.minio, self.ferretdb, self.toxiproxy):
            if server is not None:
                server.stop()

    @property
    def broker(self) -> Kafka:
        assert self.kafka is not None, "start() first"
        return self.kafka

    # --- what the system is given: the proxies -----------------------------------------------
    def proxied(self, name: str) -> str:
        return f"127.0.0.1:{self.proxies[name].port}"

    # --- what the auditor reads: the backends themselves -------------------------------------
    @property
    def mongo_uri(self) -> str:
        return self.ferretdb.uri

    @property
    def minio_endpoint(self) -> str:
        return self.minio.endpoint

    @property
    def kafka_bootstrap(self) -> str:
        return self.broker.bootstrap


class System:
    """The system under test, all real processes (`python -m ...`), every backend reached
    through its proxy: `servers` checkout servers (`server-0`, ...; each its own gRPC port,
    metrics port and WATCH_WAKE_ADDR), `relays` relays (`relay-0`, ...; their
    WATCH_WAKE_TARGETS name every server, and every server's RELAY_WAKE_TARGETS every relay),
    and one Envoy in front of the servers (tools/render_envoy.py's config with every server in
    its cluster: REST, native gRPC and grpc-web on one port)."""

    def __init__(
        self,
        backends: Backends,
        namespace: Namespace,
        work: Path,
        *,
        servers: int = 2,
        relays: int = 3,
    ) -> None:
        self.backends = backends
        self.namespace = namespace
        server_ports = [free_port() for _ in range(servers)]
        relay_ports = [free_port() for _ in range(relays)]
        logs = work / "logs"
        self.servers = [
            PythonService(
                name=f"server-{i}",
                module="checkout_server",
                port=port,
                env=self._server_env(port, [p for p in server_ports if p != port], relay_ports),
                log_path=logs / f"server-{i}.log",
            )
            for i, port in enumerate(server_ports)
        ]
        self.relays = [
            PythonService(
                name=f"relay-{i}",
                module="checkout_server.wiring.relay",
                port=port,
                env=self._relay_env(f"relay-{i}", port, server_ports),
                log_path=logs / f"relay-{i}.log",
            )
            for i, port in enumerate(relay_ports)
        ]
        self.envoy_port = free_port()
        envoy_admin = free_port()
        config = render_envoy_config(
            work / "envoy.yaml",
            listen_port=self.envoy_port,
            admin_port=envoy_admin,
            upstreams=[("127.0.0.1", port) for port in server_ports],
            descriptor=DESCRIPTOR,
            openapi=OPENAPI,
        )
        self.envoy = Envoy(
            config_path=config,
            admin_port=envoy_admin,
            cwd=REPO_ROOT,
            log_path=logs / "envoy.log",
            log_level="warning",
        )

    def _common_env(self) -> dict[str, str]:
        b, ns = self.backends, self.namespace
        return {
            **os.environ,
            "MONGO_URI": f"mongodb://{b.proxied('mongo')}/",
            "MONGO_DB": ns.database,
            "STARTUP_TIMEOUT_S": "60",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "WARNING",
            "WAKE_SECRET": WAKE_SECRET,
        }

    def _server_env(self, port: int, others: list[int], relay_ports: list[int]) -> dict[str, str]:
        b, ns = self.backends, self.namespace
        return {
            **self._common_env(),
            "GRPC_ADDR": f"127.0.0.1:{port}",
            "METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "MINIO_ENDPOINT": b.proxied("minio"),
            "DEFAULT_BUCKET": ns.buckets[0][1],
            "ALLOWED_BUCKETS": ",".join(bucket for _, bucket in ns.buckets),
            "UPLOAD_PART_BYTES": str(5 * MiB),
            # The load's workers stand for many clients, all from 127.0.0.1 or Envoy.
            "LIST_RATE_PER_MINUTE": "100000",
            "REQUEST_RATE_PER_MINUTE": "100000",
            "UPLOAD_MAX_CONCURRENT_PER_CLIENT": "64",
            "SHUTDOWN_GRACE_S": str(SERVER_GRACE_S),
            "SHUTDOWN_DRAIN_S": str(SERVER_DRAIN_S),
            "UPLOAD_ORPHAN_OBJECT_AGE_S": str(SERVER_ORPHAN_AGE_S),
            "UPLOAD_SWEEP_INTERVAL_S": str(SERVER_SWEEP_INTERVAL_S),
            "HEALTH_INTERVAL_S": "1",
            "STORAGE_ABORT_RETRY_S": "60",
            "RELAY_WAKE_TARGETS": ",".join(f"127.0.0.1:{p}" for p in relay_ports),
            # Its watchers' wake-ups (UDP, on its gRPC port, as the default), and the other
            # servers', so that their watchers learn of this one's new events at once.
            "WATCH_WAKE_ADDR": f"127.0.0.1:{port}",
            "WATCH_WAKE_TARGETS": ",".join(f"127.0.0.1:{p}" for p in others),
        }

    def _relay_env(self, name: str, port: int, server_ports: list[int]) -> dict[str, str]:
        b, ns = self.backends, self.namespace
        env = {
            **self._common_env(),
            "KAFKA_BOOTSTRAP_SERVERS": b.proxied("kafka"),
            "KAFKA_TOPIC": ns.topic,
            "RELAY_ID": name,
            "RELAY_HEALTH_ADDR": f"127.0.0.1:{port}",
            "RELAY_METRICS_ADDR": "",
            # The shipped lease TTL (10 s) and database timeout (5 s): the first long run, with
            # 6 s and 3 s, counted thousands of duplicates and ~145 leases run out unrenewed.
            "RELAY_BACKOFF_MAX_S": "2",
            "WATCH_WAKE_TARGETS": ",".join(f"127.0.0.1:{p}" for p in server_ports),
        }
        if b.ferretdb.backend == "postgresql":
            env["RELAY_UPDATE_CHUNK"] = "1000"  # as devstack's stack: FerretDB writes by index
        return env

    @property
    def processes(self) -> list[ServerProcess]:
        """Every process of the system, the servers first, Envoy last."""
        return [*self.servers, *self.relays, self.envoy]

    def server(self, name: str) -> PythonService:
        return next(s for s in self.servers if s.name == name)

    @property
    def targets(self) -> dict[str, str]:
        """Where gRPC clients connect: each server directly, and Envoy (its gRPC route)."""
        direct = {s.name: f"127.0.0.1:{s.port}" for s in self.servers}
        return {**direct, "envoy": f"127.0.0.1:{self.envoy_port}"}

    @property
    def rest_base(self) -> str:
        """Envoy's REST surface (`POST /api/upload_video`, ...)."""
        return f"http://127.0.0.1:{self.envoy_port}"

    def start(self) -> None:
        """The servers and relays at once, then Envoy (its first health checks find them)."""
        services = [*self.servers, *self.relays]
        with ThreadPoolExecutor(len(services)) as pool:
            for future in [pool.submit(s.start, 90) for s in services]:
                future.result()
        self.envoy.start(60)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def server_pid(self, name: str) -> int:
        pid = self.server(name).pid
        assert pid is not None, f"{name} is not running"
        return pid

    def terminate_server(self, name: str, timeout_s: float) -> tuple[float, int | None]:
        """SIGTERM the server `name` and wait for it to exit by itself: (seconds taken, exit
        code), or (timeout_s, None) when it had not exited by then (it is killed after)."""
        server = self.server(name)
        pid = self.server_pid(name)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        while time.monotonic() - t0 < timeout_s:
            code = server.exit_code()
            if code is not None:
                elapsed = time.monotonic() - t0
                server.kill()  # reaps it
                return elapsed, code
            time.sleep(0.05)
        server.kill()
        return timeout_s, None


def rss_bytes(pid: int) -> int:
    """The resident set size of a process, from /proc (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for pid {pid}")


class Soak:
    """The backends and the system of one run, under `work`."""

    def __init__(self, work: Path, scenarios: Iterable[str]) -> None:
        self.work = work
        self.namespace = Namespace.new(scenarios)
        self.backends = Backends(work)
        self._system: System | None = None

    @property
    def system(self) -> System:
        assert self._system is not None, "start() first"
        return self._system

    def start(self) -> None:
        """The backends and their proxies, then the system (its settings name the proxies)."""
        try:
            self.backends.start()
            self._system = System(self.backends, self.namespace, self.work)
            self._system.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._system is not None:
            self._system.stop()
        self.backends.stop()
