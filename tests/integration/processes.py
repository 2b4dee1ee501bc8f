"""A checkout server run as a real process by a test: its environment, its start (a
readiness wait on its gRPC health service), and that health check."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from checkout_server.config import MiB, ServerSettings
from tests.integration.storage_checks import wait_until


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


async def serving(port: int) -> bool:
    """One check: the gRPC health service on 127.0.0.1:`port` answers SERVING (False while
    nothing listens there, or it answers anything else)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def start_server(
    settings: ServerSettings, port: int, log_path: Path, **extra: str
) -> asyncio.subprocess.Process:
    """Start `python -m checkout_server` on `port` with `settings` (and the variables in
    `extra`), its output in `log_path`; return it once it serves. One that exits first fails
    at once, with the end of its log; one that never serves is killed before the wait's
    failure is raised."""
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "checkout_server",
            env=server_env(settings, port, **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def started() -> bool:
        if process.returncode is not None:
            log_text = await asyncio.to_thread(log_path.read_text, errors="replace")
            tail = "\n".join(log_text.splitlines()[-20:])
            raise AssertionError(
                f"the server on port {port} exited ({process.returncode}) before serving:\n{tail}"
            )
        return await serving(port)

    try:
        await wait_until(started, timeout_s=60, what=f"the server on port {port} to serve")
    except BaseException:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    return process
