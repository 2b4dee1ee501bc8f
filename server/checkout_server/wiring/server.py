"""Wiring of the server process: builds its clients, adapters, services and the gRPC server.

Each dependency gets one client, created here and shared by every request; adapters receive
them. `create_app` is what the entry point (`main`) and the tests call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, ParamSpec, cast

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from miniopy_async.api import Minio
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc

from .. import logs
from ..adapters import udp_wake
from ..adapters.kafka_status import KafkaStatusFeed
from ..adapters.minio_multipart import MinioMultipart
from ..adapters.minio_storage import MinioStorage
from ..adapters.mongo_outbox import MongoOutbox
from ..adapters.mongo_status_records import MongoStatusRecords
from ..adapters.mongo_upload_sessions import MongoUploadSessions
from ..adapters.rate_limits import MemoryCallBudget, MemoryUploadRateLimit
from ..adapters.udp_wake import WakeSender, WakeSigner
from ..api.auth import AuthInterceptor
from ..api.clients import Clients
from ..api.downloads import DownloadLimits, Downloads
from ..api.interceptors import CallObserver, ErrorInterceptor, HandlerWrapper, WrappedServices
from ..api.metrics import GrpcMetrics, ServiceCollector
from ..api.rates import CallRates
from ..api.servicer import CheckoutServicer
from ..api.shutdown import ShutdownGate
from ..auth.keys import KeyRing
from ..config import MiB, ServerSettings
from ..domain import OutboxEvent
from ..errors import ConfigError, ServiceError
from ..health import DependencyMonitor, HealthReporter, new_health_servicer
from ..outbox.announcement import Announcer
from ..outbox.document import Document
from ..status.service import StatusService, StatusSettings
from ..status.watch import WatchHub
from ..supervisor import Supervisor, retry_until
from ..tracing import current_traceparent
from ..upload.admission import Admission
from ..upload.failpoints import kill_at, no_failpoint
from ..upload.lease import LeaseTimes, WriteLeases
from ..upload.limits import UploadLimits
from ..upload.pipeline import UploadPipeline
from ..upload.resumable import ResumableUploads
from ..upload.sweeper import EventlessObjects, UploadSweeper
from .clients import minio_client, mongo_client
from .metrics import MetricsEndpoint, StatusFeedCollector, WakeUpCollector
from .status_topic import Announcing, announcing, status_feed
from .tracing import INSTRUMENTATION, tracer_provider

log = logging.getLogger("checkout_server")
P = ParamSpec("P")

# Chunks of up to 4 MiB plus framing; larger messages are refused by gRPC itself.
MAX_MESSAGE_BYTES = 4 * MiB + 64 * 1024
# How long before the end of a stop's grace period the uploads still streaming are answered
# SHUTTING_DOWN (their status sent before gRPC cancels what is left).
INTERRUPT_MARGIN_S = 1.0
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Keep idle streams (WatchStatus) alive through proxies and detect dead peers.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # A fixed 4 MiB receive window per stream instead of BDP probing, which grows windows
    # (and so what gRPC buffers for uploads the server is not reading yet) without bound on
    # fast links; 4 MiB still fills 400 MB/s at 10 ms RTT. docs/performance.md, Large REST uploads.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 * MiB),
]


@dataclass
class App:
    """A built server and what must be closed with it."""

    settings: ServerSettings
    server: grpc.aio.Server
    port: int
    health: HealthReporter
    monitor: DependencyMonitor
    pipeline: UploadPipeline
    # Admits UploadVideo streams and resumable writes; its interrupt stops both.
    admission: Admission
    # The per-client rates of CreateRequest and ListStatuses.
    rates: CallRates
    # Admits GetVideo streams and cuts those whose client stalls.
    downloads: Downloads
    hub: WatchHub
    supervisor: Supervisor
    metrics: MetricsEndpoint | None
    minio: Minio
    # What the app holds open (the clients, the wake-up sockets, the tracer provider it
    # built), closed last at stop, in the reverse order of opening.
    resources: AsyncExitStack
    # The API keys when authentication is on, kept current by a loop of their own.
    keys: KeyRing | None = None
    # Closed at stop: new calls are refused SHUTTING_DOWN for the drain (api/shutdown.py).
    gate: ShutdownGate | None = None
    # Wakes the relays after each outbox message (RELAY_WAKE_TARGETS).
    wake_relays: WakeSender | None = None
    # Wakes the other servers' watchers after each status change (WATCH_WAKE_TARGETS).
    wake_watchers: WakeSender | None = None
    # Where this server's watchers are woken by the relays and the other servers, over UDP
    # (WATCH_WAKE_ADDR; empty: GRPC_ADDR's host and bound port; `off`, or no WAKE_SECRET:
    # nowhere).
    watch_wake_addr: str = "off"
    # Signs the wake-ups sent and checks those received (WAKE_SECRET); None: none at all.
    wake_signer: WakeSigner | None = None
    # Sweeps expired resumable sessions, orphaned multipart uploads and event-less objects.
    sweeper: UploadSweeper | None = None
    # Sends this server's status changes to the status topic.
    announcer: Announcer | None = None
    # Reads the status topic for the watchers (None without STATUS_TOPIC).
    feed: KafkaStatusFeed | None = None
    # Gives the status records an older server wrote their listing hour (a round that is
    # done once, then only looks at its mark).
    record_hours: Callable[[], Awaitable[float]] | None = None

    async def start(self) -> None:
        await self.server.start()
        if self.metrics is not None:
            self.metrics.start()
        self.monitor.start()
        # Without wake-ups (`off`, or the address taken) the watchers learn of the relays'
        # and the other servers' changes at the safety-net poll.
        listener = await udp_wake.listen(self.watch_wake_addr, self.hub.wake, self.wake_signer)
        if listener is not None:
            self.resources.callback(listener.close)
        self.hub.start()
        if self.announcer is not None:
            self.supervisor.spawn("status-announcer", self.announcer.round)
        if self.feed is not None:
            self.supervisor.spawn("status-feed", self.feed.round)
        if self.sweeper is not None:
            self.supervisor.spawn("upload-sweeper", self.sweeper.round)
        if self.record_hours is not None:
            self.supervisor.spawn("status-record-hours", self.record_hours)
        for name, sender in (("relays", self.wake_relays), ("watchers", self.wake_watchers)):
            if sender is not None:
                self.supervisor.spawn(f"wake-targets-{name}", sender.refresh)
        if self.keys is not None:
            self.supervisor.spawn("api-keys", self.keys.round)
        log.info("serving", extra={"port": self.port})

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: report NOT_SERVING; for SHUTDOWN_DRAIN_S answer new calls
        SHUTTING_DOWN while the listener stays open (load balancers and clients notice and go
        elsewhere); then refuse connections, let in-flight calls finish for the grace period,
        cancel the rest (their uploads are aborted), close clients."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        await self.monitor.stop()
        if self.gate is not None:
            self.gate.close()
        self.hub.close_subscriptions()  # watch streams end now; uploads get the grace period
        if self.settings.shutdown_drain_s > 0:
            log.info("draining", extra={"drain_s": self.settings.shutdown_drain_s})
            await asyncio.sleep(self.settings.shutdown_drain_s)  # the drain period itself
        await self._stop_server(grace)
        await self.hub.stop()
        await self.supervisor.stop()
        if self.feed is not None:
            await self.feed.close()
        await self.pipeline.drain_cleanups(timeout_s=grace)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # waits for its serving thread
        await self.resources.aclose()
        log.info("stopped")

    async def _stop_server(self, grace_s: float) -> None:
        """`grpc.aio.Server.stop(grace_s)`, but the uploads (and resumable writes) still
        streaming shortly before the grace period ends are interrupted, so that each is answered
        SHUTTING_DOWN (retriable, with its reason and a Russian message) rather than with
        the bare UNAVAILABLE of gRPC's own cancellation."""
        stopping = asyncio.ensure_future(self.server.stop(grace_s))
        margin_s = min(INTERRUPT_MARGIN_S, grace_s / 2)
        done, _ = await asyncio.wait({stopping}, timeout=grace_s - margin_s)
        if not done:
            interrupted = self.admission.interrupt()  # uploads and resumable writes
            if interrupted:
                log.info(
                    "uploads interrupted at the end of the grace period",
                    extra={"uploads": interrupted},
                )
        await stopping


@dataclass(frozen=True)
class ServerTLS:
    """The gRPC server's TLS material, PEM: its private key and certificate chain and, for
    mTLS, the CA certificates that every client's certificate must chain to."""

    private_key: bytes
    certificate_chain: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ServerTLS | None:
        """The files TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE name (None without
        TLS_CERT_FILE: plaintext); an unreadable or non-PEM file is a ConfigError naming its
        variable."""
        if not settings.tls_cert_file:
            return None
        ca_file = settings.tls_client_ca_file
        return cls(
            certificate_chain=_read_pem("TLS_CERT_FILE", settings.tls_cert_file, "CERTIFICATE"),
            private_key=_read_pem("TLS_KEY_FILE", settings.tls_key_file, "PRIVATE KEY"),
            client_ca=_read_pem("TLS_CLIENT_CA_FILE", ca_file, "CERTIFICATE") if ca_file else None,
        )


def _read_pem(variable: str, path: str, label: str) -> bytes:
    """The file's bytes, which must hold a PEM block of this label ("-----BEGIN <label>")."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from exc
    if f"{label}-----".encode() not in pem:
        raise ConfigError(f"{variable}: {path} holds no PEM {label}")
    return pem


def create_server(
    address: str,
    servicer: CheckoutServicer,
    health_servicer: HealthReporter,
    *,
    tls: ServerTLS | None = None,
    observer: CallObserver | None = None,
    tracer: trace.Tracer | None = None,
    auth: AuthInterceptor | None = None,
    gate: ShutdownGate | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server with the checkout, health and reflection services, bound to `address`
    (port 0 picks a free port, returned), not started: plaintext without `tls`, else TLS,
    and mTLS (client certificates required and verified) when `tls` has a client CA. With
    `auth`, every call but health and reflection needs an API key it knows (api/auth.py);
    its refusals pass through the ErrorInterceptor like any error, as do `gate`'s once it is
    closed (the drain before a stop, api/shutdown.py)."""
    wrappers: list[HandlerWrapper] = [ErrorInterceptor(observer, tracer)]
    if gate is not None:
        wrappers.append(gate)
    if auth is None:
        log.warning(
            "authentication is off (AUTH_ENABLED=false): anyone who reaches the port may "
            "upload, read every event and result; turn it on outside a local stack"
        )
    else:
        wrappers.append(auth)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    services = cast(grpc.aio.Server, WrappedServices(server, wrappers))  # what add_* call
    pb_grpc.add_CheckoutServiceServicer_to_server(servicer, services)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    names = [
        pb.DESCRIPTOR.services_by_name["CheckoutService"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    ]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names),  # type: ignore[attr-defined]  # newer than grpc-stubs
        services,
    )
    if tls is None:
        port = server.add_insecure_port(address)
        transport = "plaintext"
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.private_key, tls.certificate_chain)],
            root_certificates=tls.client_ca,
            require_client_auth=tls.client_ca is not None,
        )
        try:
            port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # gRPC says no more than that (its own log says why)
            raise ConfigError(
                f"cannot serve TLS on {address}: is TLS_KEY_FILE the key of TLS_CERT_FILE "
                f"(and the address free)? {exc}"
            ) from exc
        transport = "tls" if tls.client_ca is None else "mtls"
    log.info("grpc transport: %s", transport, extra={"transport": transport, "port": port})
    return server, port


async def create_app(
    settings: ServerSettings, *, tracing: trace.TracerProvider | None = None
) -> App:
    """Build the server (not started), once MinIO and MongoDB answer (buckets and indexes are
    made then). Binds the port, so a port of 0 picks a free one. If start-up fails, what it
    opened is closed again. Spans go to `tracing` (the caller's to shut down), by default to a
    provider of its own (`wiring/tracing.py`) when OTEL_EXPORTER_OTLP_ENDPOINT is set, shut
    down with the app; without either no spans are made."""
    resources = AsyncExitStack()
    try:
        if tracing is None and settings.otel_exporter_otlp_endpoint:
            tracing = tracer_provider(settings, "checkout-server")
            # Flushes the spans still batched; bounded by the exporter's timeout.
            resources.push_async_callback(asyncio.to_thread, tracing.shutdown)
        minio = minio_client(settings)
        resources.push_async_callback(minio.close_session)
        mongo = mongo_client(settings, appname="checkout")
        resources.push_async_callback(mongo.close)
        keys = await _load_keys(settings)
        stores = _stores(settings, minio, mongo, resources)
        await retry_until(
            stores.prepare,
            timeout_s=settings.startup_timeout_s,
            what="start-up waits for a dependency",
        )
        app = _build(settings, stores, tracing, keys, resources)
        await app.monitor.check_now()
    except BaseException:
        await resources.aclose()
        raise
    return app


@dataclass(frozen=True)
class _Stores:
    """The adapters over MinIO and MongoDB, and the wake-ups they send."""

    settings: ServerSettings
    minio: Minio
    storage: MinioStorage
    multipart: MinioMultipart
    outbox: MongoOutbox
    records: MongoStatusRecords
    sessions: MongoUploadSessions
    # Gets each status change this process writes, as recorded (an upload's record, a
    # result marked ready); the watch hub adds itself once it is built.
    own_changes: _Callbacks[[OutboxEvent]]
    # Announces those changes on the status topic, for the other servers' watchers.
    announcing: Announcing
    wake_relays: WakeSender | None
    wake_watchers: WakeSender | None
    wake_signer: WakeSigner | None

    async def prepare(self) -> None:
        """The allowed buckets and every collection's indexes, made if missing."""
        for bucket in sorted(self.settings.allowed_buckets):
            await self.storage.ensure_bucket(bucket)
        await self.outbox.ensure_indexes()
        await self.records.ensure_indexes()
        await self.sessions.ensure_indexes()


def _stores(
    settings: ServerSettings,
    minio: Minio,
    mongo: AsyncMongoClient[Document],
    resources: AsyncExitStack,
) -> _Stores:
    database = mongo[settings.mongo_db]
    signer = udp_wake.signer_of(settings.wake_secret)
    wake_relays = udp_wake.sender_to(settings.relay_wake_targets, signer)
    wake_watchers = udp_wake.sender_to(settings.watch_wake_targets, signer)
    for sender in (wake_relays, wake_watchers):
        if sender is not None:
            resources.callback(sender.close)
    own_changes: _Callbacks[[OutboxEvent]] = _Callbacks()
    # The other servers learn of this one's changes from the status topic, or, when it does
    # not take them, from a wake-up and a read of the database.
    status = announcing(
        settings,
        client_id=f"checkout-server-{_member()}",
        on_lost=wake_watchers,
        secret=settings.wake_secret,
    )
    resources.push_async_callback(status.close)
    own_changes.add(status.announcer.announce)
    return _Stores(
        settings=settings,
        minio=minio,
        storage=MinioStorage(minio, abort_retry_s=settings.storage_abort_retry_s),
        multipart=MinioMultipart(minio),
        outbox=MongoOutbox(
            database[settings.mongo_outbox_collection],
            database[settings.mongo_status_collection],
            on_added=wake_relays,
            on_recorded=own_changes,
        ),
        records=MongoStatusRecords(
            database[settings.mongo_status_collection],
            count_max_events=settings.list_count_max_events,
            count_budget_s=settings.list_count_budget_s,
            page_budget_s=settings.list_page_budget_s,
        ),
        sessions=MongoUploadSessions(
            database[settings.mongo_upload_sessions_collection],
            database[settings.mongo_upload_facts_collection],
        ),
        own_changes=own_changes,
        announcing=status,
        wake_relays=wake_relays,
        wake_watchers=wake_watchers,
        wake_signer=signer,
    )


def _build(
    settings: ServerSettings,
    stores: _Stores,
    tracing: trace.TracerProvider | None,
    keys: KeyRing | None,
    resources: AsyncExitStack,
) -> App:
    """The services and the gRPC server over these adapters (and, with authentication on,
    these keys)."""
    supervisor = Supervisor()
    uploads = _uploads(settings, stores, keys)
    status, hub = _status(settings, stores, supervisor)
    health_servicer = new_health_servicer()
    monitor = DependencyMonitor(
        {"storage": stores.storage.ping, "database": stores.outbox.ping},
        health_servicer,
        interval_s=settings.health_interval_s,
        supervisor=supervisor,
    )
    rates = _call_rates(settings)
    downloads = Downloads(
        DownloadLimits(
            max_concurrent=settings.video_download_max_concurrent,
            max_concurrent_per_client=settings.video_download_max_concurrent_per_client,
            stall_timeout_s=settings.video_download_stall_timeout_s,
        )
    )
    servicer = CheckoutServicer(
        pipeline=uploads.pipeline,
        status=status,
        hub=hub,
        monitor=monitor,
        heartbeat_s=settings.watch_heartbeat_s,
        default_bucket=settings.default_bucket,
        resumable=uploads.resumable,
        rates=rates,
        clients=Clients(settings.trusted_proxies),
        downloads=downloads,
    )
    auth = _auth(keys)
    registry = CollectorRegistry()
    registry.register(
        ServiceCollector(
            uploads.pipeline,
            uploads.admission,
            hub,
            keys,
            uploads.sweeper,
            auth,
            rates,
            downloads,
        )
    )
    if stores.wake_signer is not None:
        registry.register(WakeUpCollector(stores.wake_signer, "checkout"))
    feed = _feed(settings, hub, stores)
    if feed is not None:
        registry.register(StatusFeedCollector(feed))
    gate = ShutdownGate()
    server, port = create_server(
        settings.grpc_addr,
        servicer,
        health_servicer,
        tls=ServerTLS.from_settings(settings),
        observer=GrpcMetrics(registry),
        tracer=None if tracing is None else tracing.get_tracer(INSTRUMENTATION),
        auth=auth,
        gate=gate,
    )
    return App(
        settings=settings,
        server=server,
        port=port,
        health=health_servicer,
        monitor=monitor,
        pipeline=uploads.pipeline,
        admission=uploads.admission,
        rates=rates,
        downloads=downloads,
        hub=hub,
        supervisor=supervisor,
        metrics=MetricsEndpoint(registry, settings.metrics_addr) if settings.metrics_addr else None,
        minio=stores.minio,
        resources=resources,
        keys=keys,
        gate=gate,
        wake_relays=stores.wake_relays,
        wake_watchers=stores.wake_watchers,
        announcer=stores.announcing.announcer,
        feed=feed,
        watch_wake_addr=_watch_wake_addr(settings, port),
        wake_signer=stores.wake_signer,
        sweeper=uploads.sweeper,
        record_hours=stores.records.give_old_records_hours,
    )


def _auth(keys: KeyRing | None) -> AuthInterceptor | None:
    """With authentication on, the interceptor that checks every call's key; a key that
    leaves the ring ends the open streams it opened."""
    if keys is None:
        return None
    auth = AuthInterceptor(keys)
    keys.subscribe(auth.keys_changed)
    return auth


def _status(
    settings: ServerSettings, stores: _Stores, supervisor: Supervisor
) -> tuple[StatusService, WatchHub]:
    """The status reads and the hub that pushes status changes to watchers (this server's
    own changes reach it through `stores.own_changes`, the others' by its poller)."""
    status = StatusService(
        storage=stores.storage,
        outbox=stores.outbox,
        records=stores.records,
        settings=_status_settings(settings),
        sessions=stores.sessions,
        traceparent=current_traceparent,
        on_changed=stores.own_changes,
    )
    hub = WatchHub(
        records=stores.records,
        status=status,
        supervisor=supervisor,
        poll_interval_s=settings.watch_poll_interval_s,
        poll_min_gap_s=settings.watch_poll_min_gap_s,
        result_check_interval_s=settings.watch_result_check_interval_s,
        reconcile_interval_s=settings.result_reconcile_interval_s,
        max_pending=settings.watch_max_pending,
        max_watchers=settings.watch_max_watchers,
        max_watchers_per_client=settings.watch_max_watchers_per_client,
    )
    stores.own_changes.add(hub.publish)
    return status, hub


def _feed(settings: ServerSettings, hub: WatchHub, stores: _Stores) -> KafkaStatusFeed | None:
    """What this server reads of the status topic, handed to its watchers."""
    return status_feed(
        settings,
        client_id=f"checkout-server-feed-{_member()}",
        on_change=hub.changed,
        on_result=hub.result_written,
        on_live=hub.topic_live,
        channel=stores.announcing.channel,
        secret=settings.wake_secret,
    )


def _member() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class _Uploads:
    admission: Admission
    pipeline: UploadPipeline
    resumable: ResumableUploads
    sweeper: UploadSweeper


def _uploads(settings: ServerSettings, stores: _Stores, keys: KeyRing | None) -> _Uploads:
    """UploadVideo's pipeline, the resumable uploads, the admission both go through, and the
    sweeper of what uploads leave behind."""
    limits = _upload_limits(settings)
    admission = Admission(
        limits,
        rate_limit=(
            MemoryUploadRateLimit(settings.upload_rate_per_minute)
            if keys is not None and settings.upload_rate_per_minute
            else None
        ),
    )
    pipeline = UploadPipeline(
        storage=stores.storage,
        outbox=stores.outbox,
        limits=limits,
        traceparent=current_traceparent,
        admission=admission,
    )
    resumable = ResumableUploads(
        sessions=stores.sessions,
        storage=stores.multipart,
        outbox=stores.outbox,
        limits=limits,
        admission=admission,
        leases=WriteLeases(
            stores.sessions,
            process=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            times=LeaseTimes(
                ttl_s=settings.upload_lease_ttl_s,
                skew_s=settings.upload_clock_skew_s,
                takeover_wait_s=settings.upload_takeover_wait_s,
            ),
        ),
        session_ttl_s=settings.upload_session_ttl_s,
        traceparent=current_traceparent,
        failpoint=kill_at(settings.upload_failpoint) if settings.upload_failpoint else no_failpoint,
    )
    sweeper = UploadSweeper(
        resumable=resumable,
        sessions=stores.sessions,
        storage=stores.multipart,
        buckets=settings.allowed_buckets,
        orphan_age_s=settings.upload_max_duration_s,
        interval_s=settings.upload_sweep_interval_s,
        objects=EventlessObjects(
            storage=stores.storage,
            outbox=stores.outbox,
            sessions=stores.sessions,
            min_age_s=settings.upload_orphan_object_age_s,
        ),
    )
    return _Uploads(admission, pipeline, resumable, sweeper)


class _Callbacks(Generic[P]):
    """Calls each callback added, in order, with the same arguments: a hook given to an
    adapter before what it must call exists."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[P, None]] = []

    def add(self, callback: Callable[P, None]) -> None:
        self._callbacks.append(callback)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for callback in self._callbacks:
            callback(*args, **kwargs)


def _watch_wake_addr(settings: ServerSettings, grpc_port: int) -> str:
    """WATCH_WAKE_ADDR, by default the gRPC address's host and (bound) port."""
    if settings.watch_wake_addr:
        return settings.watch_wake_addr
    host = settings.grpc_addr.rpartition(":")[0]
    return f"{host}:{grpc_port}"


async def _load_keys(settings: ServerSettings) -> KeyRing | None:
    """The API keys when authentication is on (read off the event loop); ConfigError when
    AUTH_KEYS_FILE cannot be read or is invalid."""
    if not settings.auth_enabled:
        return None
    return await asyncio.to_thread(
        KeyRing, Path(settings.auth_keys_file), reload_interval_s=settings.auth_reload_interval_s
    )


def _upload_limits(settings: ServerSettings) -> UploadLimits:
    return UploadLimits(
        default_bucket=settings.default_bucket,
        allowed_buckets=settings.allowed_buckets,
        max_bytes=settings.upload_max_bytes,
        part_bytes=settings.upload_part_bytes,
        memory_budget_bytes=settings.upload_memory_budget_bytes,
        max_concurrent=settings.upload_max_concurrent,
        max_duration_s=settings.upload_max_duration_s,
        memory_wait_s=settings.upload_memory_wait_s,
        max_concurrent_per_client=settings.upload_max_concurrent_per_client,
        max_open_sessions_per_client=settings.upload_max_open_sessions_per_client,
        idle_timeout_s=settings.upload_idle_timeout_s,
        min_bytes_per_s=settings.upload_min_bytes_per_s,
        throughput_window_s=settings.upload_throughput_window_s,
    )


def _call_rates(settings: ServerSettings) -> CallRates:
    def per_minute(calls: int) -> MemoryUploadRateLimit | None:
        return MemoryUploadRateLimit(calls) if calls else None

    checks = settings.result_check_rate_per_s
    return CallRates(
        create_request=per_minute(settings.request_rate_per_minute),
        list_statuses=per_minute(settings.list_rate_per_minute),
        result_checks=MemoryCallBudget(checks) if checks else None,
    )


def _status_settings(settings: ServerSettings) -> StatusSettings:
    return StatusSettings(
        default_bucket=settings.default_bucket,
        allowed_buckets=settings.allowed_buckets,
        result_key_template=settings.result_key_template,
        result_max_bytes=settings.result_max_bytes,
        admin_token=settings.admin_token,
    )


async def serve(settings: ServerSettings) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully."""
    app = await create_app(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": settings.shutdown_grace_s})
    await app.stop()


def main() -> None:
    """Entry point (`checkout-server`, `python -m checkout_server`): settings from the
    environment, logging, serve until SIGTERM/SIGINT, then a graceful stop."""
    try:
        settings = ServerSettings.from_env()
    except ConfigError as exc:
        sys.exit(f"checkout-server: configuration error: {exc}")
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:  # found while building: an unreadable TLS file, say
        sys.exit(f"checkout-server: configuration error: {exc}")
    except ServiceError as exc:
        log.error("could not start: %s", exc.text)
        sys.exit(1)
