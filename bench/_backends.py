"""What the benchmarks start: FerretDB, MinIO and the checkout server as a real process."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack import FerretDB, MinIO, free_port
from devstack._stack import PythonService


@dataclass(frozen=True)
class Backends:
    ferretdb: FerretDB
    minio: MinIO
    server: PythonService

    @property
    def server_pid(self) -> int:
        pid = self.server.pid
        assert pid is not None, "the server is not running"
        return pid

    def pids(self) -> dict[str, int]:
        """The running processes by name (PostgreSQL's postmaster where FerretDB uses it)."""
        processes = {
            "server": self.server,
            "ferretdb": self.ferretdb,
            "postgresql": self.ferretdb.postgres,
            "minio": self.minio,
        }
        return {n: p.pid for n, p in processes.items() if p is not None and p.pid}


@contextmanager
def started(work: Path, env: Mapping[str, str] | None = None) -> Iterator[Backends]:
    """FerretDB, MinIO and a checkout server on free ports under `work`; all stopped after.
    `env` adds to (or replaces) the server's environment."""
    ferretdb = FerretDB(port=free_port(), data_dir=work / "ferretdb", log_path=work / "f.log")
    minio = MinIO(
        port=free_port(), console_port=free_port(), data_dir=work / "minio", log_path=work / "m.log"
    )
    port = free_port()
    server = PythonService(
        name="checkout-server",
        module="checkout_server",
        port=port,
        env={
            "GRPC_ADDR": f"127.0.0.1:{port}",
            "METRICS_ADDR": "",  # not measured here; never collides with a running stack
            "MINIO_ENDPOINT": minio.endpoint,
            "MONGO_URI": ferretdb.uri,
            "LOG_LEVEL": "WARNING",
            # The concurrent uploads and watchers of a benchmark stand for many clients sharing one
            # address.
            "UPLOAD_MAX_CONCURRENT_PER_CLIENT": "64",
            "WATCH_MAX_WATCHERS_PER_CLIENT": "4096",
            "LIST_RATE_PER_MINUTE": "100000",
            "REQUEST_RATE_PER_MINUTE": "100000",
            **(env or {}),
        },
        log_path=work / "server.log",
    )
    try:
        ferretdb.start()
        minio.start()
        server.start()
        yield Backends(ferretdb, minio, server)
    finally:
        server.stop()
        minio.stop()
        ferretdb.stop()
