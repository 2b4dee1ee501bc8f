"""Wiring of the runner process (`checkout-runner`): builds its clients (Kafka, MinIO,
MongoDB), adapters, detectors, metrics endpoint and tracer, and runs the consumer loop until
SIGTERM/SIGINT (the batch in flight is then left uncommitted, for the group to deliver
again)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import aiohttp
import cv2
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from miniopy_async.api import Minio
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import start_http_server
from pymongo import AsyncMongoClient

from checkout_common.backoff import Backoff
from checkout_common.supervisor import retry_until

from .adapters.isolated_decoder import IsolatedDecoder
from .adapters.kafka_announcer import KafkaResultAnnouncer
from .adapters.kafka_source import KafkaEventSource
from .adapters.minio_store import MinioObjectStore
from .adapters.mongo_states import Document, MongoStateStore
from .config import RunnerSettings
from .consumer import ConsumerLoop
from .downloads import sweep_stale
from .errors import RunnerError
from .metrics import RunnerMetrics
from .ports import Detector
from .processor import Processor, ProcessorConfig
from .tracing import INSTRUMENTATION, Spans

log = logging.getLogger("checkout_runner")


def build_detector(settings: RunnerSettings) -> Detector:
    """The detector RUNNER_DETECTOR names (imported only when chosen)."""
    if settings.runner_detector == "hog-people":
        from .adapters.hog_people import HogPeopleDetector

        return HogPeopleDetector(
            threshold=settings.runner_score_threshold,
            max_detections=settings.runner_max_detections_per_frame,
        )
    from .adapters.centerface import CenterFaceDetector

    return CenterFaceDetector(
        threshold=settings.runner_score_threshold,
        threads=settings.runner_threads_per_video,
        provider=settings.runner_onnx_provider,
        max_detections=settings.runner_max_detections_per_frame,
    )


def tracer_provider(settings: RunnerSettings) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "checkout-runner"}))
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_exporter_otlp_endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@dataclass
class RunnerApp:
    settings: RunnerSettings
    loop: ConsumerLoop
    source: KafkaEventSource
    states: MongoStateStore
    metrics: RunnerMetrics
    mongo: AsyncMongoClient[Document]
    minio: Minio
    provider: TracerProvider
    announcer: KafkaResultAnnouncer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve metrics, join the group (retrying while Kafka or MongoDB is down), consume
        until `stop`, then leave the group and close the clients."""
        metrics_server = None
        if self.settings.runner_metrics_addr:
            host, _, port = self.settings.runner_metrics_addr.rpartition(":")
            metrics_server, _thread = start_http_server(
                int(port), addr=host or "0.0.0.0", registry=self.metrics.registry
            )
            log.info("metrics", extra={"metrics_port": metrics_server.server_port})
        try:
            await asyncio.to_thread(sweep_stale, self.settings.temp_dir)
            if await self._start(stop):
                log.info("runner consuming", extra={"topic": self.settings.kafka_topic})
                try:
                    await self.loop.run(stop)
                finally:
                    await self.source.stop()
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            if self.announcer is not None:
                await self.announcer.close()
            await self.mongo.close()
            await self.minio.close_session()  # type: ignore[no-untyped-call]
            await asyncio.to_thread(self.provider.shutdown)

    async def _start(self, stop: asyncio.Event) -> bool:
        """Indexes and the group, retried for as long as it takes (any RunnerError: an
        outage or a dependency not up yet); False when `stop` came first."""
        settings = self.settings

        async def start() -> None:
            await self.states.ensure_indexes()
            await self.source.start()

        return await retry_until(
            start,
            what="runner start-up",
            retry_if=lambda exc: isinstance(exc, RunnerError),
            timeout_s=None,
            backoff=Backoff(settings.runner_retry_initial_s, settings.runner_retry_max_s),
            stop=stop,
        )


def kafka_consumer(settings: RunnerSettings, *, member: str) -> AIOKafkaConsumer:
    """The runner's consumer group member: manual commits, authenticated as
    KAFKA_SECURITY_PROTOCOL says."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.runner_group_id,
        client_id=member,
        enable_auto_commit=False,
        # A new group starts at the beginning: events published before any runner joined
        # are processed too.
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 3, 100),
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        # How long the broker waits for every member to rejoin a rebalance: aiokafka's
        # default is the session timeout, after which a member still finishing its batch
        # (the rebalance listener waits for it) is dropped and its records go to another
        # member, processed twice. The batch may take as long as a poll interval.
        rebalance_timeout_ms=settings.kafka_max_poll_interval_ms,
        max_poll_records=settings.runner_concurrency,
        **settings.kafka_client_security(),
    )


def result_announcer(settings: RunnerSettings, *, member: str) -> KafkaResultAnnouncer | None:
    """The announcer of results on STATUS_TOPIC (None without one), with acks from all
    in-sync replicas, giving up after 5 s."""
    if not settings.status_topic:
        return None
    return KafkaResultAnnouncer(
        lambda: AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{member}-status",
            acks="all",
            request_timeout_ms=5_000,
            **settings.kafka_client_security(),
        ),
        topic=settings.status_topic,
        timeout_s=5.0,
    )


def create_runner(settings: RunnerSettings) -> RunnerApp:
    """Build the runner (not started; call inside the event loop that runs it)."""
    member = settings.member_id
    cv2.setNumThreads(settings.runner_threads_per_video)
    timeout = settings.mongo_timeout_ms
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_uri,
        tz_aware=True,
        appname="checkout-runner",
        serverSelectionTimeoutMS=timeout,
        connectTimeoutMS=timeout,
        socketTimeoutMS=timeout * 2,
    )
    minio = Minio(
        settings.minio_endpoint,
        access_key=settings.minio_access_key,
        secret_key=settings.minio_secret_key,
        secure=settings.minio_secure,
        session=aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
        ),
    )
    consumer = kafka_consumer(settings, member=member)
    source = KafkaEventSource(consumer, settings.kafka_topic)
    states = MongoStateStore(mongo[settings.mongo_db][settings.runner_state_collection])
    metrics = RunnerMetrics()
    provider = tracer_provider(settings)
    announcer = result_announcer(settings, member=member)
    processor = Processor(
        store=MinioObjectStore(minio),
        states=states,
        decoder=IsolatedDecoder(settings.decode_limits, threads=settings.runner_threads_per_video),
        detectors=[build_detector(settings) for _ in range(settings.runner_concurrency)],
        config=ProcessorConfig(
            runner_id=member,
            sample_fps=settings.runner_sample_fps,
            max_video_bytes=settings.runner_max_video_bytes,
            max_sampled_frames=settings.runner_max_sampled_frames,
            max_result_bytes=settings.result_max_bytes,
            detect_batch=settings.runner_detect_batch,
            max_attempts=settings.runner_max_attempts,
            retry_initial_s=settings.runner_retry_initial_s,
            retry_max_s=settings.runner_retry_max_s,
            temp_dir=settings.temp_dir,
            result_key=lambda e: settings.result_key(video_id=e.video_id, event_id=e.event_id),
            buckets=settings.allowed_buckets,
        ),
        metrics=metrics,
        span=Spans(provider.get_tracer(INSTRUMENTATION)).processing,
        announcer=announcer,
    )
    loop = ConsumerLoop(
        source=source,
        processor=processor,
        metrics=metrics,
        concurrency=settings.runner_concurrency,
        retry_initial_s=settings.runner_retry_initial_s,
        retry_max_s=settings.runner_retry_max_s,
        lag_interval_s=settings.runner_lag_interval_s,
    )
    return RunnerApp(
        settings=settings,
        loop=loop,
        source=source,
        states=states,
        metrics=metrics,
        mongo=mongo,
        minio=minio,
        provider=provider,
        announcer=announcer,
    )


async def serve(settings: RunnerSettings) -> None:
    app = create_runner(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.run(stop)
