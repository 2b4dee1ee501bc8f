"""Server interceptors: turn ServiceErrors into rich statuses and log one line per call.

Every handler kind (unary/stream in, unary/stream out) is wrapped the same way:
- a ServiceError becomes its gRPC code, its Russian message and a google.rpc.ErrorInfo;
- any other exception becomes what errors.from_exception says (a TimeoutError nothing
  translated becomes DEADLINE_EXCEEDED, anything else INTERNAL with a generic message), and
  its traceback is logged;
- an abort already raised by the handler passes through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from .. import errors
from ..errors import ERROR_DOMAIN, ServiceError
from ..logs import request_id_var

log = logging.getLogger(__name__)

_Context = grpc.aio.ServicerContext[Any, Any]
# Handler behaviours of an aio server (grpc-stubs 1.53 types them as sync callables).
_Unary = Callable[[Any, _Context], Awaitable[Any]]
_Stream = Callable[[Any, _Context], AsyncIterator[Any]]

if TYPE_CHECKING:  # generic only in grpc-stubs
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


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


class ErrorInterceptor(_ServerInterceptor):
    """Maps exceptions to statuses, writes one log line per call and tells `observer`."""

    def __init__(self, observer: CallObserver | None = None) -> None:
        self._observer = observer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method, observer = handler_call_details.method, self._observer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, "unary", observer, cast(_Unary, handler.unary_unary)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(method, "client_stream", observer, cast(_Unary, handler.stream_unary)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(
                    method, "server_stream", observer, cast(_Stream, handler.unary_stream)
                ),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, "bidi_stream", observer, cast(_Stream, handler.stream_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _CallLog:
    """Collects what the single log line of a call says, and tells the observer."""

    def __init__(self, method: str, rpc_type: str, observer: CallObserver | None) -> None:
        self.method = method
        self.rpc_type = rpc_type
        self.observer = observer
        self.started = time.monotonic()
        self.token = request_id_var.set(uuid.uuid4().hex[:16])
        if observer is not None:
            observer.started(method, rpc_type)

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
        request_id_var.reset(self.token)


def _unexpected(method: str, exc: BaseException) -> ServiceError:
    log.error("unexpected error in %s", method, exc_info=exc)
    return errors.from_exception(exc)


@asynccontextmanager
async def _outcome(
    method: str, rpc_type: str, observer: CallObserver | None, context: _Context
) -> AsyncIterator[None]:
    """Logs the call's outcome and turns its exceptions into statuses."""
    call = _CallLog(method, rpc_type, observer)
    try:
        yield
    except ServiceError as exc:
        call.done(exc.code, exc.reason)
        await _abort(context, exc)
    except grpc.aio.AbortError:
        call.done(context.code() or grpc.StatusCode.UNKNOWN)
        raise
    except asyncio.CancelledError:
        call.done(grpc.StatusCode.CANCELLED)
        raise
    except Exception as exc:
        error = _unexpected(method, exc)
        call.done(error.code, error.reason)
        await _abort(context, error)
    else:
        call.done(grpc.StatusCode.OK)


def _wrap_unary(
    method: str, rpc_type: str, observer: CallObserver | None, behavior: _Unary
) -> _Unary:
    async def wrapper(request: Any, context: _Context) -> Any:
        async with _outcome(method, rpc_type, observer, context):
            return await behavior(request, context)

    return wrapper


def _wrap_stream(
    method: str, rpc_type: str, observer: CallObserver | None, behavior: _Stream
) -> _Stream:
    async def wrapper(request: Any, context: _Context) -> AsyncIterator[Any]:
        async with _outcome(method, rpc_type, observer, context):
            async for response in behavior(request, context):
                yield response

    return wrapper
