"""One upload is one trace across processes: the server's span of the upload and the relay's
publish span share the trace id of the client's `traceparent`, which the outbox document and
the Kafka record carry (real server, FerretDB, MinIO and Kafka; the relay in-process)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymongo.asynchronous.collection import AsyncCollection

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.config import RelaySettings, ServerSettings
from checkout_server.outbox.document import SENT, STATUS, TRACEPARENT, Document
from checkout_server.wiring.relay import create_relay
from checkout_server.wiring.server import create_app
from devstack import Kafka
from tests.helpers import mp4_bytes
from tests.integration.storage_checks import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"
INCOMING = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
UPLOAD_SPAN = "checkout.v1.CheckoutService/UploadVideo"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


async def test_an_upload_and_its_publishing_are_one_trace(
    settings: ServerSettings,
    kafka: Kafka,
    outbox_collection: AsyncCollection[Document],
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    topic = f"traces-{uuid.uuid4().hex[:10]}"
    app = await create_app(settings, tracing=provider)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.CheckoutServiceStub(channel)
            requests = [
                pb.UploadVideoRequest(metadata=pb.UploadMetadata(filename="v.mp4")),
                pb.UploadVideoRequest(chunk=mp4_bytes(2000)),
            ]
            response = await stub.UploadVideo(iter(requests), metadata=(("traceparent", INCOMING),))
    finally:
        await app.stop(grace_s=1.0)
    event_id = response.event_id

    (upload,) = [s for s in exporter.get_finished_spans() if s.name == UPLOAD_SPAN]
    assert upload.kind is trace.SpanKind.SERVER
    assert trace_id(upload) == TRACE_ID
    assert upload.parent is not None
    assert f"{upload.parent.span_id:016x}" == CLIENT_SPAN_ID
    assert upload.context is not None
    upload_traceparent = f"00-{TRACE_ID}-{upload.context.span_id:016x}-01"

    stored = await outbox_collection.find_one({"_id": event_id})
    assert stored is not None
    assert stored[TRACEPARENT] == upload_traceparent

    relay_settings = RelaySettings(
        mongo_uri=settings.mongo_uri,
        mongo_db=settings.mongo_db,
        mongo_outbox_collection=settings.mongo_outbox_collection,
        mongo_status_collection=settings.mongo_status_collection,
        kafka_bootstrap_servers=kafka.bootstrap,
        kafka_topic=topic,
        kafka_topic_partitions=1,
        relay_shards=1,
        relay_health_addr="127.0.0.1:0",
        relay_metrics_addr="",
        relay_sent_retention_s=3600,  # the check below reads the sent outbox message
        startup_timeout_s=20.0,
    )
    relay = await create_relay(relay_settings, tracing=provider)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:

        async def sent() -> bool:
            document = await outbox_collection.find_one({"_id": event_id})
            return document is not None and document[STATUS] == SENT

        await wait_until(sent, timeout_s=60, what="the relay to publish the event")
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)

    (publish,) = [s for s in exporter.get_finished_spans() if s.name == "publish"]
    assert publish.kind is trace.SpanKind.PRODUCER
    assert trace_id(publish) == trace_id(upload) == TRACE_ID
    assert publish.parent is not None
    assert publish.parent.span_id == upload.context.span_id
    assert publish.context is not None

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.key == event_id.encode()
    headers = dict(record.headers)
    assert headers["traceparent"] == f"00-{TRACE_ID}-{publish.context.span_id:016x}-01".encode()
