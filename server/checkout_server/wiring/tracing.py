"""The TracerProvider of a process (OpenTelemetry SDK): spans are exported over OTLP/gRPC only
when OTEL_EXPORTER_OTLP_ENDPOINT is set. Without it the server makes no spans (a caller's trace
context still goes through the outbox, wiring/server.py); the relay's are made (so its publish
carries a context on to the runner) and dropped. Nothing is registered globally: wiring passes
tracers to the objects that make spans."""

from __future__ import annotations

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from ..config import TracingSection

INSTRUMENTATION = "checkout_server"


def tracer_provider(settings: TracingSection, service_name: str) -> TracerProvider:
    """A provider for `service_name` (the `service.name` resource attribute) exporting to
    OTEL_EXPORTER_OTLP_ENDPOINT, if set, in batches; shut it down at exit (flushes)."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    endpoint = settings.otel_exporter_otlp_endpoint
    if endpoint:
        # Imported only when used: it loads gRPC and protobuf modules of its own.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider
