"""The wrappers of every call's handler: errors turned into rich statuses, one log line per call,
metrics and traces (`ErrorInterceptor`), the drain before a stop (shutdown.py) and API keys
(auth.py).

Each wraps a method's handler once, when the server registers it (`WrappedServices`), rather
than as a grpc.aio interceptor, which wraps the handler again at every call (a chain of
coroutines and a new handler each time, on the path of every lookup).

`ErrorInterceptor` wraps every handler kind (unary/stream in, unary/stream out) the same way:
- a ServiceError becomes its gRPC code, its Russian message and a google.rpc.ErrorInfo;
- any other exception becomes what errors.from_exception says (a TimeoutError nothing
  translated becomes DEADLINE_EXCEEDED, anything else INTERNAL with a generic message), and
  its traceback is logged;
- an abort already raised by the handler passes through untouched.

With a tracer, every call is a SERVER span that continues the caller's W3C trace (a
`traceparent` in the metadata, which Envoy passes on from REST) or else starts a new one; the
handler runs inside it, so what it stores (an upload's outbox event) can carry its context.
Without one (no exporter: a span costs about a tenth of a lookup's CPU) the handler runs in
the caller's context, when it sent one, so what it stores still continues the caller's trace.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import errors
from ..errors import ERROR_DOMAIN, ServiceError
from ..logs import request_id_var
from ..tracing import context_from_headers
from .streams import stepwise

log = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext[Any, Any]
# Handler behaviours of an aio server (grpc-stubs 1.53 types them as sync callables).
_Unary = Callable[[Any, _Context], Awaitable[Any]]
_Stream = Callable[[Any, _Context], AsyncIterator[Any]]

if TYPE_CHECKING:  # generic only in grpc-stubs
    _GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    _GenericHandler = grpc.GenericRpcHandler


def rich_status(error: ServiceError) -> grpc.Status:
    """The google.rpc.Status for `error`: an ErrorInfo carrying its reason, and a RetryInfo
    when the error has a retry hint."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    details = [info]
    if error.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(timedelta(seconds=error.retry_after_s))
        details.append(retry)
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=error.code.value[0], message=error.text, details=packed)
    return rpc_status.to_status(status)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ServiceError) -> None:
    status = rich_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


class CallObserver(Protocol):
    """Told of every call's start and outcome (the server's gRPC metrics)."""

    def started(self, method: str, rpc_type: str) -> None:
        """`method` is the full name (/package.Service/Method); `rpc_type` one of unary,
        client_stream, server_stream, bidi_stream."""

    def handled(self, method: str, rpc_type: str, code: grpc.StatusCode, seconds: float) -> None:
        """The call ended with `code` after `seconds`."""


class HandlerWrapper(Protocol):
    """Wraps the handler of a method (/package.Service/Method) once, at its registration."""

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]: ...


class WrappedServices:
    """Where the generated `add_*Servicer_to_server` functions register their service: on
    `server`, each method's handler wrapped by `wrappers`, the first outermost (it sees what
    the others raise)."""

    def __init__(self, server: grpc.aio.Server, wrappers: Sequence[HandlerWrapper]) -> None:
        self._server = server
        self._wrappers = tuple(reversed(wrappers))

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        for wrapper in self._wrappers:
            handler = wrapper.wrap(method, handler)
        return handler

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]  # newer than grpc-stubs
            service, {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Sequence[_GenericHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Wrapped(h, self.wrap) for h in handlers))


class _Wrapped(_GenericHandler):
    """A generic handler's handlers, each wrapped on its method's first call and kept (one per
    method it serves: an unknown method's None is not kept)."""

    def __init__(
        self,
        handlers: _GenericHandler,
        wrap: Callable[[str, grpc.RpcMethodHandler[Any, Any]], grpc.RpcMethodHandler[Any, Any]],
    ) -> None:
        self._handlers = handlers
        self._wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self._handlers.service(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped


class ErrorInterceptor:
    """Maps exceptions to statuses, writes one log line per call, tells `observer` and, with
    a `tracer`, makes a span of every call."""

    def __init__(
        self, observer: CallObserver | None = None, tracer: trace.Tracer | None = None
    ) -> None:
        self._observers = _Observers(observer, tracer)

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        observers = self._observers
        return rewrap(
            handler,
            lambda rpc_type, behavior: _wrap_unary(method, rpc_type, observers, behavior),
            lambda rpc_type, behavior: _wrap_stream(method, rpc_type, observers, behavior),
        )


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    unary: Callable[[str, _Unary], _Unary],
    stream: Callable[[str, _Stream], _Stream],
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its behaviour wrapped: by `unary(rpc_type, behaviour)` when it returns
    one response, by `stream(...)` when it streams them. `rpc_type` is unary, client_stream,
    server_stream or bidi_stream."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary("unary", cast(_Unary, handler.unary_unary)), **serializers
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary("client_stream", cast(_Unary, handler.stream_unary)), **serializers
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream("server_stream", cast(_Stream, handler.unary_stream)), **serializers
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            stream("bidi_stream", cast(_Stream, handler.stream_stream)), **serializers
        )
    return handler


@dataclass(frozen=True)
class _Observers:
    """Who is told of a call: the metrics observer and the tracer (each optional)."""

    metrics: CallObserver | None
    tracer: trace.Tracer | None


class _Call:
    """One call: its request id, its span (with a tracer), its log line and its observer.

    `scope()` makes the request id and the span current, for a step of the handler at a
    time: nothing current is held across a yield of a streaming handler, whose end may come
    from another context (a stream closed by its client is finalized by asyncio in a task of
    its own), where resetting a token set in the handler's context fails."""

    def __init__(
        self, method: str, rpc_type: str, observers: _Observers, context: _Context
    ) -> None:
        self.method = method
        self.rpc_type = rpc_type
        self.observer = observers.metrics
        self.context = context
        self.started = time.monotonic()
        self.request_id = secrets.token_hex(8)
        self.span: trace.Span | None = None
        self._trace_context: otel_context.Context | None = None
        parent = context_from_headers(context.invocation_metadata() or ())
        if observers.tracer is None:
            self._trace_context = parent or None  # the caller's, if it sent one
        else:
            service, _, name = method.lstrip("/").rpartition("/")
            self.span = observers.tracer.start_span(
                method.lstrip("/"),
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            )
            self._trace_context = trace.set_span_in_context(self.span, parent)
        if self.observer is not None:
            self.observer.started(method, rpc_type)

    @contextmanager
    def scope(self) -> Iterator[None]:
        request_id = request_id_var.set(self.request_id)
        attached = None if self._trace_context is None else otel_context.attach(self._trace_context)
        try:
            yield
        finally:
            if attached is not None:
                otel_context.detach(attached)
            request_id_var.reset(request_id)

    async def fail(self, exc: BaseException) -> NoReturn:
        """Log `exc`'s outcome and send it as a status (an abort), or let it pass."""
        if isinstance(exc, ServiceError):
            self.done(exc.code, exc.reason)
            await _abort(self.context, exc)
        elif isinstance(exc, grpc.aio.AbortError):
            self.done(self.context.code() or grpc.StatusCode.UNKNOWN)
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.done(grpc.StatusCode.CANCELLED)
        elif isinstance(exc, Exception):
            error = _unexpected(self.method, exc)
            self.done(error.code, error.reason)
            await _abort(self.context, error)
        raise exc

    def done(self, code: grpc.StatusCode, reason: str = "") -> None:
        elapsed = time.monotonic() - self.started
        level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.INFO
        log.log(
            level,
            "rpc finished",
            extra={
                "method": self.method,
                "code": code.name,
                "reason": reason,
                "ms": round(elapsed * 1000, 1),
            },
        )
        if self.observer is not None:
            self.observer.handled(self.method, self.rpc_type, code, elapsed)
        if self.span is not None:
            self.span.set_attribute("rpc.grpc.status_code", code.value[0])
            if reason:
                self.span.set_attribute("error.type", reason)
            if code in _SERVER_ERRORS:
                self.span.set_status(trace.StatusCode.ERROR, reason or code.name)

    def end(self) -> None:
        if self.span is not None:
            self.span.end()


# The codes that mark a server span as failed (OpenTelemetry's gRPC conventions).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _unexpected(method: str, exc: BaseException) -> ServiceError:
    log.error("unexpected error in %s", method, exc_info=exc)
    return errors.from_exception(exc)


def _wrap_unary(method: str, rpc_type: str, observers: _Observers, behavior: _Unary) -> _Unary:
    async def wrapper(request: Any, context: _Context) -> Any:
        call = _Call(method, rpc_type, observers, context)
        try:
            with call.scope():
                try:
                    response = await behavior(request, context)
                except BaseException as exc:
                    await call.fail(exc)
                call.done(grpc.StatusCode.OK)
                return response
        finally:
            call.end()

    return wrapper


def _wrap_stream(method: str, rpc_type: str, observers: _Observers, behavior: _Stream) -> _Stream:
    if inspect.iscoroutinefunction(behavior):
        # A handler that writes its responses with context.write() (grpc_health's Watch)
        # rather than yielding them: wrapped as a coroutine, as gRPC then expects.
        return cast(_Stream, _wrap_unary(method, rpc_type, observers, cast(_Unary, behavior)))

    async def wrapper(request: Any, context: _Context) -> AsyncIterator[Any]:
        call = _Call(method, rpc_type, observers, context)
        responses = stepwise(behavior(request, context), call.scope)
        try:
            async for response in responses:
                yield response
        except BaseException as exc:
            with call.scope():
                await responses.aclose()
                await call.fail(exc)
        else:
            with call.scope():
                call.done(grpc.StatusCode.OK)
        finally:
            call.end()

    return wrapper
