"""The backend clients, built once per process by its wiring and shared by every request.

Each process (server, relay) builds exactly the clients it needs here and hands them to its
adapters; nothing else constructs a MongoDB, MinIO or Kafka client.
"""

from __future__ import annotations

import aiohttp
from aiohttp_retry import ExponentialRetry, RetryClient
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient

from ..adapters.kafka_publisher import KafkaPublisher
from ..adapters.minio_storage import ChecksummedMinio
from ..config import KafkaSection, MongoSection, RelaySettings, StorageSection
from ..outbox.document import Document

# The relay's envelope is small; this leaves room, and larger records are refused per event.
KAFKA_MAX_REQUEST_BYTES = 1024 * 1024
# How long the status topic keeps its records: servers read it from its end.
STATUS_RETENTION_MS = 3_600_000


def mongo_client(settings: MongoSection, *, appname: str) -> AsyncMongoClient[Document]:
    """The one MongoDB client of a process (server or relay), with bounded timeouts."""
    timeout = settings.mongo_timeout_ms
    return AsyncMongoClient(
        settings.mongo_uri,
        tz_aware=True,
        appname=appname,
        serverSelectionTimeoutMS=timeout,
        connectTimeoutMS=timeout,
        socketTimeoutMS=timeout * 2,
    )


def minio_client(settings: StorageSection) -> ChecksummedMinio:
    """The server's MinIO client, on a session of our own: bounded connect/read timeouts (the
    library's default waits 5 minutes to connect) and retries of 5xx answers only (part
    bodies are bytes, safe to resend). A ChecksummedMinio: parts carry a CRC32 checksum
    instead of a payload signature (adapters/minio_storage.py)."""
    session = RetryClient(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        ),
        retry_options=ExponentialRetry(attempts=3, factor=0.2, statuses={500, 502, 503, 504}),
    )
    return ChecksummedMinio(
        settings.minio_endpoint,
        access_key=settings.minio_access_key,
        secret_key=settings.minio_secret_key,
        secure=settings.minio_secure,
        session=session,
    )


def kafka_producer(
    settings: KafkaSection, *, client_id: str, timeout_s: float, linger_ms: int = 0
) -> AIOKafkaProducer:
    """A new idempotent producer with acks from all in-sync replicas (one per process and
    topic at a time; its publisher asks for a new one after a fatal producer error),
    authenticated as KAFKA_SECURITY_PROTOCOL says."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=KAFKA_MAX_REQUEST_BYTES,
        request_timeout_ms=int(timeout_s * 1000),
        retry_backoff_ms=200,
        **settings.kafka_client_security(),
    )


def kafka_admin(settings: KafkaSection, *, client_id: str, timeout_s: float) -> AIOKafkaAdminClient:
    """A new admin client (a process creates its topics when they are missing)."""
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=client_id,
        request_timeout_ms=int(timeout_s * 1000),
        **settings.kafka_client_security(),
    )


def status_consumer(settings: KafkaSection, *, client_id: str) -> AIOKafkaConsumer:
    """A reader of the status topic from its end, in no consumer group: each server reads
    every record. A fetch is answered as soon as a record comes, or after 500 ms without one
    (often enough for the feed's liveness, adapters/kafka_status.py; at 100 ms an idle
    server's fetches cost the broker 3 % of a core)."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=500,
        metadata_max_age_ms=30_000,
        **settings.kafka_client_security(),
    )


def events_publisher(settings: RelaySettings, *, member: str) -> KafkaPublisher:
    """The relay's writer of the events' topic (KAFKA_TOPIC; created when missing)."""
    return _publisher(
        settings,
        topic=settings.kafka_topic,
        client_id=f"checkout-relay-{member}",
        admin_client_id=f"checkout-relay-admin-{member}",
        timeout_s=settings.relay_send_timeout_s,
        linger_ms=settings.kafka_linger_ms,
    )


def status_publisher(settings: KafkaSection, *, client_id: str) -> KafkaPublisher:
    """The writer of the status topic (created when missing: records kept an hour, as
    servers read it from its end)."""
    return _publisher(
        settings,
        topic=settings.status_topic,
        client_id=client_id,
        admin_client_id=f"{client_id}-admin",
        timeout_s=settings.status_send_timeout_s,
        topic_configs={"retention.ms": str(STATUS_RETENTION_MS)},
    )


def _publisher(
    settings: KafkaSection,
    *,
    topic: str,
    client_id: str,
    admin_client_id: str,
    timeout_s: float,
    linger_ms: int = 0,
    topic_configs: dict[str, str] | None = None,
) -> KafkaPublisher:
    """A KafkaPublisher of `topic`, its producers and admin clients built from `settings`."""
    return KafkaPublisher(
        producer_factory=lambda: kafka_producer(
            settings, client_id=client_id, timeout_s=timeout_s, linger_ms=linger_ms
        ),
        admin_factory=lambda: kafka_admin(settings, client_id=admin_client_id, timeout_s=timeout_s),
        topic=topic,
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_replication_factor,
        timeout_s=timeout_s,
        topic_configs=topic_configs,
    )
