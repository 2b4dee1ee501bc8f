"""The backend clients, built once per process by its wiring and shared by every request.

Each process (server, relay) builds exactly the clients it needs here and hands them to its
adapters; nothing else constructs a MongoDB, MinIO or Kafka client.
"""

from __future__ import annotations

import aiohttp
from aiohttp_retry import ExponentialRetry, RetryClient
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient

from ..adapters.minio_storage import ChecksummedMinio
from ..config import MongoSection, RelaySettings, StorageSection
from ..outbox.document import Document

# The relay's envelope is small; this leaves room, and larger records are refused per event.
KAFKA_MAX_REQUEST_BYTES = 1024 * 1024


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


def kafka_producer(settings: RelaySettings, *, member: str) -> AIOKafkaProducer:
    """A new idempotent producer with acks from all in-sync replicas (one per relay at a
    time; the publisher asks for a new one after a fatal producer error), authenticated as
    KAFKA_SECURITY_PROTOCOL says."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"checkout-relay-{member}",
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=KAFKA_MAX_REQUEST_BYTES,
        request_timeout_ms=int(settings.relay_send_timeout_s * 1000),
        retry_backoff_ms=200,
        **settings.kafka_client_security(),
    )


def kafka_admin(settings: RelaySettings, *, member: str) -> AIOKafkaAdminClient:
    """A new admin client (the relay creates its topic when it is missing)."""
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"checkout-relay-admin-{member}",
        request_timeout_ms=int(settings.relay_send_timeout_s * 1000),
        **settings.kafka_client_security(),
    )
