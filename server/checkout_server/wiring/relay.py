"""Wiring of the relay process (`checkout-relay`): builds its clients (MongoDB, Kafka),
adapters, the health and metrics endpoints and the relay itself, and runs it until
SIGTERM/SIGINT (then it finishes and marks the batch in flight, flushes the producer and
releases the leases)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from pymongo import AsyncMongoClient

from .. import logs
from ..adapters import udp_wake
from ..adapters.kafka_publisher import KafkaPublisher
from ..adapters.mongo_relay_store import MongoLeaseStore, MongoOutboxRelayStore
from ..adapters.udp_wake import WakeSender, WakeSigner
from ..config import RelaySettings
from ..errors import ConfigError, PublisherUnavailable, ServiceError
from ..health import HealthReporter, new_health_servicer
from ..outbox.document import Document
from ..relay.leases import LeaseManager, SystemClock
from ..relay.metrics import RelayMetrics
from ..relay.relay import Relay, RelayConfig
from ..supervisor import Supervisor, retry_until
from .clients import events_publisher, mongo_client
from .metrics import MetricsEndpoint, WakeUpCollector
from .status_topic import Announcing, announcing
from .tracing import INSTRUMENTATION, tracer_provider

log = logging.getLogger("checkout_server.relay")

SERVICE_NAME = "checkout.v1.OutboxRelay"


@dataclass
class RelayApp:
    relay: Relay
    metrics: RelayMetrics
    health_server: grpc.aio.Server
    health_port: int
    health: HealthReporter
    metrics_server: MetricsEndpoint | None
    mongo: AsyncMongoClient[Document]
    # Shut down (flushing its spans) at the end when the relay built it.
    tracer_provider: TracerProvider | None = None
    # Where wake-ups arrive: "" is the health address over UDP, "off" none.
    wake_addr: str = "off"
    # Wakes the servers' watchers after each batch marked (WATCH_WAKE_TARGETS); its names
    # are resolved again by a loop of `supervisor`'s.
    wake_watchers: WakeSender | None = None
    supervisor: Supervisor | None = None
    # Signs the wake-ups sent and checks those received (WAKE_SECRET); None: none at all.
    wake_signer: WakeSigner | None = None
    # Announces the events marked on the status topic (wakes the watchers when it cannot).
    announcing: Announcing | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve health and metrics, relay until `stop`, then stop gracefully."""
        await self.health_server.start()
        # Without wake-ups (`off`, or the address taken) the relay finds new events at its
        # safety-net poll.
        listener = await udp_wake.listen(self.wake_addr, self.relay.wake, self.wake_signer)
        if listener is not None:
            self.relay.push = True
        if self.metrics_server is not None:
            self.metrics_server.start()
        refresh = None
        if self.wake_watchers is not None and self.supervisor is not None:
            refresh = self.supervisor.spawn("wake-targets-watchers", self.wake_watchers.refresh)
        announcer = None
        if self.announcing is not None and self.supervisor is not None:
            announcer = self.supervisor.spawn("status-announcer", self.announcing.announcer.round)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "relay running",
            extra={
                "health_port": self.health_port,
                "metrics_port": self.metrics_server.port if self.metrics_server else None,
            },
        )
        try:
            await self.relay.run(stop)
        finally:
            helpers = [t for t in (refresh, announcer) if t is not None]
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if self.announcing is not None:
                await self.announcing.close()
            if listener is not None:
                listener.close()
            await self.health.enter_graceful_shutdown()
            if self.metrics_server is not None:
                await asyncio.to_thread(self.metrics_server.stop)  # waits for its thread
            await self.health_server.stop(1.0)
            await self.mongo.close()
            if self.wake_watchers is not None:
                self.wake_watchers.close()
            if self.tracer_provider is not None:
                await asyncio.to_thread(self.tracer_provider.shutdown)


def _wake_addr(settings: RelaySettings, health_port: int) -> str:
    """RELAY_WAKE_ADDR, by default the health service's host and (bound) port."""
    if settings.relay_wake_addr:
        return settings.relay_wake_addr
    host = settings.relay_health_addr.rpartition(":")[0]
    return f"{host}:{health_port}"


def _relay_config(settings: RelaySettings) -> RelayConfig:
    return RelayConfig(
        shards=settings.relay_shards,
        batch_size=settings.relay_batch_size,
        poll_interval_s=settings.relay_poll_interval_s,
        backoff_initial_s=settings.relay_backoff_initial_s,
        backoff_max_s=settings.relay_backoff_max_s,
        sent_retention_s=settings.relay_sent_retention_s,
        sweep_interval_s=settings.relay_sweep_interval_s,
        sweep_batch=settings.relay_sweep_batch,
        wake_min_gap_s=settings.relay_wake_min_gap_s,
    )


def _metrics_server(
    settings: RelaySettings, metrics: RelayMetrics, signer: WakeSigner | None
) -> MetricsEndpoint | None:
    """The Prometheus endpoint on RELAY_METRICS_ADDR, or None when it is set empty."""
    if not settings.relay_metrics_addr:
        return None
    registry = metrics.registry()
    if signer is not None:
        registry.register(WakeUpCollector(signer, "checkout_relay"))
    return MetricsEndpoint(registry, settings.relay_metrics_addr)


async def create_relay(
    settings: RelaySettings, *, tracing: trace.TracerProvider | None = None
) -> RelayApp:
    """Build the relay (not started); binds the health port (0 picks a free one). Its
    publish spans go to `tracing` (the caller's to shut down), by default to a provider of
    its own (`wiring/tracing.py`)."""
    member = settings.relay_id or f"{socket.gethostname()}-{os.getpid()}"
    mongo = mongo_client(settings, appname="checkout-relay")
    database = mongo[settings.mongo_db]
    outbox_name = settings.mongo_outbox_collection
    signer = udp_wake.signer_of(settings.wake_secret)
    wake_watchers = udp_wake.sender_to(settings.watch_wake_targets, signer)
    store = MongoOutboxRelayStore(
        database[outbox_name],
        database[settings.mongo_status_collection],
        keep_sent=settings.relay_sent_retention_s > 0,
        update_chunk=settings.relay_update_chunk,
    )
    status = announcing(
        settings,
        client_id=f"checkout-relay-status-{member}",
        on_lost=wake_watchers,
        secret=settings.wake_secret,
    )
    lease_store = MongoLeaseStore(
        database[f"{outbox_name}_relay_leases"], database[f"{outbox_name}_relay_members"]
    )

    publisher = events_publisher(settings, member=member)
    clock = SystemClock()
    leases = LeaseManager(
        lease_store,
        member=member,
        shards=settings.relay_shards,
        ttl_s=settings.relay_lease_ttl_s,
        skew_s=settings.relay_clock_skew_s,
        clock=clock,
    )
    supervisor = Supervisor()
    metrics = RelayMetrics(loop_failures=supervisor.failures)
    owned = tracer_provider(settings, "checkout-relay") if tracing is None else None
    provider: trace.TracerProvider = owned or tracing or trace.NoOpTracerProvider()
    relay = Relay(
        store=store,
        leases=leases,
        publisher=publisher,
        metrics=metrics,
        config=_relay_config(settings),
        clock=clock,
        supervisor=supervisor,
        tracer=provider.get_tracer(INSTRUMENTATION),
        topic=settings.kafka_topic,
        announce=status.announcer.announce,
        settled=status.announcer.settled,
    )

    health_servicer = new_health_servicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(settings.relay_health_addr)
    metrics_server = _metrics_server(settings, metrics, signer)

    await _prepare(settings, store, lease_store, publisher)
    return RelayApp(
        relay=relay,
        metrics=metrics,
        health_server=server,
        health_port=port,
        health=health_servicer,
        metrics_server=metrics_server,
        mongo=mongo,
        tracer_provider=owned,
        wake_addr=_wake_addr(settings, port),
        wake_watchers=wake_watchers,
        supervisor=supervisor,
        wake_signer=signer,
        announcing=status,
    )


async def _prepare(
    settings: RelaySettings,
    store: MongoOutboxRelayStore,
    lease_store: MongoLeaseStore,
    publisher: KafkaPublisher,
) -> None:
    """Indexes (waiting for MongoDB up to STARTUP_TIMEOUT_S) and a first Kafka connection;
    Kafka being down is not fatal: events wait and the relay keeps trying."""

    async def indexes() -> None:
        await store.ensure_indexes()
        await lease_store.ensure_indexes()

    await retry_until(
        indexes, timeout_s=settings.startup_timeout_s, what="relay start-up waits for MongoDB"
    )
    try:
        await publisher.start()
    except PublisherUnavailable as exc:
        log.warning("kafka not reachable at start-up; will keep trying: %s", exc.detail)


async def serve(settings: RelaySettings) -> None:
    app = await create_relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.run(stop)


def main() -> None:
    """Entry point (`checkout-relay`, `python -m checkout_server.wiring.relay`)."""
    try:
        settings = RelaySettings.from_env()
    except ConfigError as exc:
        sys.exit(f"checkout-relay: configuration error: {exc}")
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ServiceError as exc:
        log.error("could not start: %s", exc.text)
        sys.exit(1)


if __name__ == "__main__":
    main()
