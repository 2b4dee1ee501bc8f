"""Dependency health: probes storage and the outbox, feeds the standard gRPC health service
(NOT_SERVING while a dependency is down) and the REST Health RPC."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Protocol

from grpc_health.v1 import health, health_pb2

from .errors import ServiceError
from .supervisor import Supervisor


class HealthReporter(Protocol):
    """What we use of grpc_health's asyncio HealthServicer (grpc-stubs 1.53 predate it)."""

    async def set(self, service: str, status: int) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


def new_health_servicer() -> HealthReporter:
    """The standard asyncio grpc.health.v1 servicer."""
    servicer: HealthReporter = health.aio.HealthServicer()  # type: ignore[attr-defined]
    return servicer


log = logging.getLogger(__name__)

SERVICE_NAME = "checkout.v1.CheckoutService"
Probe = Callable[[], Awaitable[None]]


class DependencyMonitor:
    """Probes each dependency every `interval_s` seconds and publishes the verdict."""

    def __init__(
        self,
        probes: Mapping[str, Probe],
        servicer: HealthReporter,
        *,
        interval_s: float,
        supervisor: Supervisor,
        timeout_s: float = 3.0,
    ) -> None:
        self._probes = dict(probes)
        self._servicer = servicer
        self._interval_s = interval_s
        self._supervisor = supervisor
        self._timeout_s = timeout_s
        self._results: dict[str, str] = dict.fromkeys(self._probes, "unknown")
        self._task: asyncio.Task[None] | None = None

    @property
    def results(self) -> Mapping[str, str]:
        """Dependency name -> "ok" or a short reason, as of the last probe."""
        return MappingProxyType(self._results)

    @property
    def healthy(self) -> bool:
        return all(v == "ok" for v in self._results.values())

    async def check_now(self) -> None:
        names = list(self._probes)
        outcomes = await asyncio.gather(*(self._probe(n) for n in names))
        changed = False
        for name, outcome in zip(names, outcomes, strict=True):
            if self._results.get(name) != outcome:
                changed = True
                log.log(
                    logging.INFO if outcome == "ok" else logging.WARNING,
                    "dependency %s: %s",
                    name,
                    outcome,
                )
            self._results[name] = outcome
        if changed:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if self.healthy
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in ("", SERVICE_NAME):
                await self._servicer.set(service, status)

    async def _probe(self, name: str) -> str:
        try:
            await asyncio.wait_for(self._probes[name](), self._timeout_s)
        except TimeoutError:
            return "timeout"
        except ServiceError as exc:
            return exc.reason.lower()
        except Exception as exc:  # a probe must never kill the monitor
            return type(exc).__name__
        return "ok"

    def start(self) -> None:
        self._task = self._supervisor.spawn("dependency-monitor", self._round)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _round(self) -> float:
        await asyncio.sleep(self._interval_s)
        await self.check_now()
        return 0.0
