"""The handlers' wrappers: registered wrapped both ways gRPC looks a handler up; a streaming
wrapper when a stream is closed from outside, as asyncio does for a server stream whose client
went away (the generator finalized in a task, and so a context, of its own), where nothing
set in the handler's context may be reset; the caller's trace without a tracer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from checkout_server.api.auth import AuthInterceptor, current_principal
from checkout_server.api.interceptors import ErrorInterceptor, WrappedServices
from checkout_server.domain import Principal, Role
from checkout_server.logs import request_id_var
from checkout_server.tracing import current_traceparent

pytestmark = pytest.mark.timeout(10)

WATCH = "/checkout.v1.CheckoutService/WatchStatus"
READER = Principal(client="dashboard", role=Role.READER)
CALLERS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer k"),)

    def code(self) -> grpc.StatusCode | None:
        return None


class Keys:
    def authenticate(self, token: str) -> Principal | None:
        return READER if token == "k" else None


class Observer:
    def __init__(self) -> None:
        self.codes: list[grpc.StatusCode] = []

    def started(self, method: str, rpc_type: str) -> None:
        pass

    def handled(self, method: str, rpc_type: str, code: grpc.StatusCode, seconds: float) -> None:
        self.codes.append(code)


async def test_a_stream_closed_from_another_context_ends_its_call_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = Observer()
    seen: list[tuple[Principal, str]] = []
    closed = asyncio.Event()

    async def watch(request: Any, context: Any) -> AsyncIterator[int]:
        try:
            for n in range(10):
                seen.append((current_principal(), request_id_var.get()))
                yield n
        finally:
            seen.append((current_principal(), request_id_var.get()))
            closed.set()

    handler = grpc.unary_stream_rpc_method_handler(watch)
    authorized = AuthInterceptor(Keys()).wrap(WATCH, handler)
    wrapped = ErrorInterceptor(observer, provider.get_tracer("test")).wrap(WATCH, authorized)
    behavior = cast(Callable[[Any, Any], AsyncGenerator[Any, None]], wrapped.unary_stream)
    stream = behavior(None, Context())

    async def first() -> Any:
        return await anext(stream)

    async def close() -> None:
        await stream.aclose()

    with caplog.at_level(logging.DEBUG):
        assert await asyncio.create_task(first()) == 0  # grpc's task: a context of its own
        await asyncio.create_task(close())  # asyncio's finalizer: another one
        await asyncio.wait_for(closed.wait(), 5)
    provider.shutdown()

    # The handler saw its principal and request id at each step, its close included.
    assert [p for p, _ in seen] == [READER, READER]
    assert seen[0][1]
    assert seen[0][1] == seen[1][1]
    # The call was logged, observed and traced as cancelled, and nothing failed to reset.
    assert observer.codes == [grpc.StatusCode.CANCELLED]
    (span,) = exporter.get_finished_spans()
    assert span.name == WATCH.lstrip("/")
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("traceparent", CALLERS),), CALLERS),  # what the handler stores continues it
        ((("user-agent", "grpc-python"),), ""),  # no trace: none made up
    ],
)
async def test_without_a_tracer_a_call_runs_in_its_callers_trace(
    metadata: tuple[tuple[str, str], ...], expected: str
) -> None:
    seen: list[str] = []

    async def upload(request: Any, context: Any) -> int:
        seen.append(current_traceparent())
        return 0

    handler = grpc.unary_unary_rpc_method_handler(upload)

    class Called(Context):
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return metadata

    wrapped = ErrorInterceptor(Observer(), None).wrap(
        "/checkout.v1.CheckoutService/UploadVideo", handler
    )
    behavior = cast(Callable[[Any, Any], Awaitable[Any]], wrapped.unary_unary)
    assert await behavior(None, Called()) == 0

    assert seen == [expected]
    assert current_traceparent() == ""  # nothing left attached after the call


class Registered:
    """What a server was given: its registered handlers and its generic ones."""

    def __init__(self) -> None:
        self.registered: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self.generic: list[Any] = []

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.registered |= {f"/{service}/{name}": h for name, h in handlers.items()}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)


class Tagging:
    """A wrapper that records its name on each handler it wraps."""

    def __init__(self, name: str) -> None:
        self.name = name

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(cast(Any, (self.name, handler.unary_unary)))


def test_a_service_is_registered_wrapped_both_ways_grpc_looks_handlers_up() -> None:
    # Both ways, each wrapped once (the first wrapper outermost): a handler registered
    # unwrapped either way would be served without errors mapped, metrics or keys checked.
    server = Registered()
    services = WrappedServices(cast(grpc.aio.Server, server), [Tagging("outer"), Tagging("inner")])
    method = "/checkout.v1.CheckoutService/GetStatus"
    handlers = {"GetStatus": grpc.unary_unary_rpc_method_handler(len)}
    services.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("checkout.v1.CheckoutService", handlers),)
    )
    services.add_registered_method_handlers("checkout.v1.CheckoutService", handlers)

    wrapped = ("outer", ("inner", len))
    assert cast(Any, server.registered[method].unary_unary) == wrapped
    (generic,) = server.generic
    found = generic.service(cast(grpc.HandlerCallDetails, SimpleNamespace(method=method)))
    assert cast(Any, found.unary_unary) == wrapped
    again = generic.service(cast(grpc.HandlerCallDetails, SimpleNamespace(method=method)))
    assert again is found  # wrapped on the first call only
    unknown = SimpleNamespace(method="/checkout.v1.CheckoutService/Nothing")
    assert generic.service(cast(grpc.HandlerCallDetails, unknown)) is None
