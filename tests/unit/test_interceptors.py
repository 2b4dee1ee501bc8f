"""The interceptors' streaming wrappers when a stream is closed from outside: as asyncio does
for a server stream whose client went away (the generator finalized in a task, and so a
context, of its own). Nothing set in the handler's context may be reset there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from checkout_server.api.auth import AuthInterceptor, current_principal
from checkout_server.api.interceptors import ErrorInterceptor
from checkout_server.domain import Principal, Role
from checkout_server.logs import request_id_var
from checkout_server.tracing import current_traceparent

pytestmark = pytest.mark.timeout(10)

WATCH = "/checkout.v1.CheckoutService/WatchStatus"
READER = Principal(client="dashboard", role=Role.READER)
CALLERS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = (("authorization", "Bearer k"),)


class Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return Details.invocation_metadata

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

    async def handler(details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_stream_rpc_method_handler(watch)

    async def authorized(details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return await AuthInterceptor(Keys()).intercept_service(handler, details)

    errors = ErrorInterceptor(observer, provider.get_tracer("test"))
    wrapped = await errors.intercept_service(
        authorized, cast(grpc.HandlerCallDetails, Details(WATCH))
    )
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

    async def handler(details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(upload)

    class Called(Context):
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return metadata

    wrapped = await ErrorInterceptor(Observer(), None).intercept_service(
        handler, cast(grpc.HandlerCallDetails, Details("/checkout.v1.CheckoutService/UploadVideo"))
    )
    behavior = cast(Callable[[Any, Any], Awaitable[Any]], wrapped.unary_unary)
    assert await behavior(None, Called()) == 0

    assert seen == [expected]
    assert current_traceparent() == ""  # nothing left attached after the call
