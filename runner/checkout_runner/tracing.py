"""Traces: processing a video is a span whose parent is the Kafka record's `traceparent` (the
relay's publish span, itself a child of the upload's), so one upload is one trace from the
client to the result. The OpenTelemetry API only; wiring sets up the SDK and exporter and
hands the processor `Spans(tracer).processing` (the processor imports no OpenTelemetry)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

INSTRUMENTATION = "checkout_runner"
_propagator = TraceContextTextMapPropagator()


class Spans:
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextlib.contextmanager
    def processing(self, traceparent: str, attributes: dict[str, str]) -> Iterator[str]:
        """A `process video` span continuing `traceparent` (a new trace without one); yields
        its trace id in hex (32 digits), for the logs and the state record."""
        parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
        with self._tracer.start_as_current_span(
            "process video", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield format(span.get_span_context().trace_id, "032x")
