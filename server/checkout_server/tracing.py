"""W3C trace context helpers over the OpenTelemetry API (never the SDK: wiring/ builds the
TracerProvider and passes tracers in).

An upload's trace crosses processes through the outbox: the server stores the upload span's
context as a `traceparent` string with the event, and the relay's publish span continues it
and sends it on as a Kafka header.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"  # the W3C header, gRPC metadata key and Kafka header
TRACESTATE = "tracestate"

_PROPAGATOR = TraceContextTextMapPropagator()


def context_from_headers(headers: Iterable[tuple[str, str | bytes]]) -> Context:
    """The context of a `traceparent` (and `tracestate`) among these headers or gRPC
    metadata; an empty context (a new trace starts) without a valid one."""
    carrier: dict[str, str] = {}
    for key, value in headers:
        name = key.lower()
        if name in (TRACEPARENT, TRACESTATE) and isinstance(value, str):
            carrier[name] = value
    return _PROPAGATOR.extract(carrier) if carrier else Context()


def context_from_traceparent(traceparent: str) -> Context:
    """The context of a stored `traceparent`; empty (a new trace) when it is "" or invalid."""
    return _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else Context()


def traceparent_of(span: trace.Span) -> str:
    """`span`'s context as a `traceparent` string, "" if it has no valid context."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT, "")


def current_traceparent() -> str:
    """The current span's context as a `traceparent` string, "" outside any span. Wiring
    hands this to the upload pipeline, which knows no OpenTelemetry."""
    return traceparent_of(trace.get_current_span())
