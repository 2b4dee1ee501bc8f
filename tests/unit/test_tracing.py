"""Traces across the outbox with fakes: the relay's publish span continues the trace stored
with the event, and its message carries the `traceparent` header."""

from __future__ import annotations

from dataclasses import replace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from checkout_client.backoff import Backoff
from checkout_server.outbox.document import TRACEPARENT, from_document, status_document, to_document
from checkout_server.relay.leases import LeaseManager
from checkout_server.relay.metrics import RelayMetrics
from checkout_server.relay.relay import Relay, RelayConfig
from checkout_server.supervisor import Supervisor
from checkout_server.tracing import context_from_headers, current_traceparent
from tests.fakes import FakeClock, FakeLeaseStore, FakePublisher, FakeRelayStore
from tests.helpers import outbox_event

pytestmark = pytest.mark.timeout(10)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
STORED = f"00-{TRACE_ID}-{PARENT_ID}-01"


def headers_of(message: object) -> dict[str, bytes]:
    return dict(message.headers)  # type: ignore[attr-defined]


async def relay_with(
    exporter: InMemorySpanExporter | None,
) -> tuple[Relay, FakeRelayStore, FakePublisher]:
    clock, store, publisher = FakeClock(), FakeRelayStore(), FakePublisher()
    leases = LeaseManager(FakeLeaseStore(), member="me", shards=1, ttl_s=6, skew_s=1, clock=clock)
    await leases.rebalance()
    tracer = None
    if exporter is not None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
    relay = Relay(
        store=store,
        leases=leases,
        publisher=publisher,
        metrics=RelayMetrics(),
        config=RelayConfig(shards=1),
        clock=clock,
        supervisor=Supervisor(backoff=Backoff(0.01, 0.02)),
        tracer=tracer,
        topic="videos",
    )
    return relay, store, publisher


async def test_the_publish_span_continues_the_stored_trace_and_the_header_carries_it() -> None:
    exporter = InMemorySpanExporter()
    relay, store, publisher = await relay_with(exporter)
    store.add("traced", traceparent=STORED)
    store.add("untraced")

    assert (await relay.step())[0] == 2

    spans = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}  # type: ignore[index]
    traced, untraced = spans["traced"], spans["untraced"]
    assert traced.name == "publish"
    assert traced.kind is trace.SpanKind.PRODUCER
    assert traced.parent is not None
    assert traced.parent.is_remote
    assert f"{traced.parent.trace_id:032x}" == TRACE_ID
    assert f"{traced.parent.span_id:016x}" == PARENT_ID
    assert f"{traced.context.trace_id:032x}" == TRACE_ID
    assert traced.status.is_ok
    assert untraced.parent is None  # no stored context: a trace of its own
    assert untraced.context.trace_id != traced.context.trace_id

    messages = {m.key.decode(): headers_of(m) for m in publisher.published}
    header = messages["traced"]["traceparent"].decode()
    # The publish span's own context, in the upload's trace.
    assert header == f"00-{TRACE_ID}-{traced.context.span_id:016x}-01"
    assert messages["untraced"]["traceparent"].decode().split("-")[1] == (
        f"{untraced.context.trace_id:032x}"
    )


async def test_a_rejected_message_ends_its_span_as_an_error() -> None:
    exporter = InMemorySpanExporter()
    relay, store, publisher = await relay_with(exporter)
    store.add("big", traceparent=STORED)
    publisher.reject.add("big")

    await relay.step()

    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["checkout.outcome"] == "rejected"


async def test_without_a_tracer_the_stored_traceparent_is_passed_on() -> None:
    relay, store, publisher = await relay_with(None)
    store.add("traced", traceparent=STORED)
    store.add("untraced")

    await relay.step()

    messages = {m.key.decode(): headers_of(m) for m in publisher.published}
    assert messages["traced"]["traceparent"] == STORED.encode()
    assert "traceparent" not in messages["untraced"]


def test_an_incoming_traceparent_is_the_parent_of_the_current_span() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    context = context_from_headers([("user-agent", "x"), ("traceparent", STORED)])
    assert current_traceparent() == ""
    with tracer.start_as_current_span("upload", context=context) as span:
        current = current_traceparent()
    assert current == f"00-{TRACE_ID}-{span.get_span_context().span_id:016x}-01"
    with tracer.start_as_current_span(
        "fresh", context=context_from_headers([("traceparent", "garbage")])
    ) as fresh:
        assert f"{fresh.get_span_context().trace_id:032x}" != TRACE_ID


def test_the_outbox_documents_carry_the_traceparent() -> None:
    event = outbox_event("e", filename="v.mp4", size_bytes=5, traceparent=STORED)
    message = to_document(event)
    assert message[TRACEPARENT] == STORED
    assert status_document(message)[TRACEPARENT] == STORED
    assert from_document(message).traceparent == STORED
    assert to_document(replace(event, traceparent=""))[TRACEPARENT] is None
    assert from_document({**message, TRACEPARENT: None}).traceparent == ""
