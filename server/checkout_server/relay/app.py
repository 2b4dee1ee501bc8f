"""Wiring of the relay: the one place that builds its clients (MongoDB, Kafka), adapters,
the health and metrics endpoints, and the relay itself."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

import grpc
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymongo import AsyncMongoClient

from ..adapters.kafka_publisher import KafkaPublisher
from ..adapters.mongo_relay_store import Document, MongoLeaseStore, MongoOutboxRelayStore
from ..clients import mongo_client
from ..config import ConfigError, Settings
from ..errors import DatabaseUnavailable
from ..health import HealthReporter, new_health_servicer
from .leases import LeaseManager, SystemClock
from .metrics import MetricsServer, RelayMetrics
from .ports import PublisherUnavailable
from .relay import Relay, RelayConfig
from .sharding import SLOTS

log = logging.getLogger(__name__)

SERVICE_NAME = "checkout.v1.OutboxRelay"
# The envelope is small; this leaves room, and larger records are refused per event.
MAX_REQUEST_BYTES = 1024 * 1024


def check_settings(settings: Settings) -> None:
    """The relay's own checks of its settings (raises ConfigError naming the variable)."""
    if not 1 <= settings.relay_shards <= SLOTS:
        raise ConfigError(f"RELAY_SHARDS must be between 1 and {SLOTS}")
    if settings.relay_lease_ttl_s <= 2 * settings.relay_clock_skew_s:
        raise ConfigError("RELAY_LEASE_TTL_S must be more than twice RELAY_CLOCK_SKEW_S")
    if settings.relay_batch_size < 1 or settings.relay_sweep_batch < 1:
        raise ConfigError("RELAY_BATCH_SIZE and RELAY_SWEEP_BATCH must be positive")
    if settings.relay_poll_interval_s <= 0 or settings.relay_send_timeout_s <= 0:
        raise ConfigError("RELAY_POLL_INTERVAL_S and RELAY_SEND_TIMEOUT_S must be positive")
    if not 0 < settings.relay_backoff_initial_s <= settings.relay_backoff_max_s:
        raise ConfigError("need 0 < RELAY_BACKOFF_INITIAL_S <= RELAY_BACKOFF_MAX_S")


@dataclass
class RelayApp:
    relay: Relay
    metrics: RelayMetrics
    health_server: grpc.aio.Server
    health_port: int
    health: HealthReporter
    metrics_server: MetricsServer | None
    mongo: AsyncMongoClient[Document]

    async def run(self, stop: asyncio.Event) -> None:
        """Serve health and metrics, relay until `stop`, then stop gracefully."""
        await self.health_server.start()
        if self.metrics_server is not None:
            await self.metrics_server.start()
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
            await self.health.enter_graceful_shutdown()
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            await self.health_server.stop(1.0)
            await self.mongo.close()


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "0.0.0.0", int(port)


async def create_relay(settings: Settings) -> RelayApp:
    """Build the relay (not started); binds the health port (0 picks a free one)."""
    check_settings(settings)
    member = settings.relay_id or f"{socket.gethostname()}-{os.getpid()}"
    mongo = mongo_client(settings, appname="checkout-relay")
    database = mongo[settings.mongo_db]
    outbox_name = settings.mongo_outbox_collection
    store = MongoOutboxRelayStore(database[outbox_name], database[settings.mongo_status_collection])
    lease_store = MongoLeaseStore(
        database[f"{outbox_name}_relay_leases"], database[f"{outbox_name}_relay_members"]
    )

    def producer() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"checkout-relay-{member}",
            enable_idempotence=True,
            acks="all",
            linger_ms=settings.kafka_linger_ms,
            max_batch_size=256 * 1024,
            max_request_size=MAX_REQUEST_BYTES,
            request_timeout_ms=int(settings.relay_send_timeout_s * 1000),
            retry_backoff_ms=200,
        )

    def admin() -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"checkout-relay-admin-{member}",
            request_timeout_ms=int(settings.relay_send_timeout_s * 1000),
        )

    publisher = KafkaPublisher(
        producer_factory=producer,
        admin_factory=admin,
        topic=settings.kafka_topic,
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_replication_factor,
        timeout_s=settings.relay_send_timeout_s,
    )
    clock = SystemClock()
    leases = LeaseManager(
        lease_store,
        member=member,
        shards=settings.relay_shards,
        ttl_s=settings.relay_lease_ttl_s,
        skew_s=settings.relay_clock_skew_s,
        clock=clock,
    )
    metrics = RelayMetrics()
    relay = Relay(
        store=store,
        leases=leases,
        publisher=publisher,
        metrics=metrics,
        config=RelayConfig(
            shards=settings.relay_shards,
            batch_size=settings.relay_batch_size,
            poll_interval_s=settings.relay_poll_interval_s,
            backoff_initial_s=settings.relay_backoff_initial_s,
            backoff_max_s=settings.relay_backoff_max_s,
            sent_retention_s=settings.relay_sent_retention_s,
            sweep_interval_s=settings.relay_sweep_interval_s,
            sweep_batch=settings.relay_sweep_batch,
        ),
        clock=clock,
    )

    health_servicer = new_health_servicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(settings.relay_health_addr)
    metrics_server = None
    if settings.relay_metrics_addr:
        host, metrics_port = _split_addr(settings.relay_metrics_addr)
        metrics_server = MetricsServer(metrics, host, metrics_port)

    await _prepare(settings, store, lease_store, publisher)
    return RelayApp(
        relay=relay,
        metrics=metrics,
        health_server=server,
        health_port=port,
        health=health_servicer,
        metrics_server=metrics_server,
        mongo=mongo,
    )


async def _prepare(
    settings: Settings,
    store: MongoOutboxRelayStore,
    lease_store: MongoLeaseStore,
    publisher: KafkaPublisher,
) -> None:
    """Indexes (waiting for MongoDB up to STARTUP_TIMEOUT_S) and a first Kafka connection;
    Kafka being down is not fatal: events wait and the relay keeps trying."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.startup_timeout_s
    delay = 0.2
    while True:
        try:
            await store.ensure_indexes()
            await lease_store.ensure_indexes()
            break
        except DatabaseUnavailable:
            if loop.time() + delay > deadline:
                raise
            log.warning("relay start-up waits for MongoDB")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        await publisher.start()
    except PublisherUnavailable as exc:
        log.warning("kafka not reachable at start-up; will keep trying: %s", exc)
