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
from typing import TYPE_CHECKING, Any, cast

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
    """The google.rpc.Status for `error`, with an ErrorInfo carrying its reason."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.code.value[0], message=error.text, details=[detail])
    return rpc_status.to_status(status)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ServiceError) -> None:
    status = rich_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


class ErrorInterceptor(_ServerInterceptor):
    """Maps exceptions to statuses and writes one log line per call."""

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
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, cast(_Unary, handler.unary_unary)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(method, cast(_Unary, handler.stream_unary)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, cast(_Stream, handler.unary_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, cast(_Stream, handler.stream_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _CallLog:
    """Collects what the single log line of a call says."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.started = time.monotonic()
        self.token = request_id_var.set(uuid.uuid4().hex[:16])

    def done(self, code: grpc.StatusCode, reason: str = "") -> None:
        elapsed_ms = round((time.monotonic() - self.started) * 1000, 1)
        level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.INFO
        log.log(
            level,
            "rpc finished",
            extra={"method": self.method, "code": code.name, "reason": reason, "ms": elapsed_ms},
        )
        request_id_var.reset(self.token)


def _unexpected(method: str, exc: BaseException) -> ServiceError:
    log.error("unexpected error in %s", method, exc_info=exc)
    return errors.from_exception(exc)


@asynccontextmanager
async def _outcome(method: str, context: _Context) -> AsyncIterator[None]:
    """Logs the call's outcome and turns its exceptions into statuses."""
    call = _CallLog(method)
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


def _wrap_unary(method: str, behavior: _Unary) -> _Unary:
    async def wrapper(request: Any, context: _Context) -> Any:
        async with _outcome(method, context):
            return await behavior(request, context)

    return wrapper


def _wrap_stream(method: str, behavior: _Stream) -> _Stream:
    async def wrapper(request: Any, context: _Context) -> AsyncIterator[Any]:
        async with _outcome(method, context):
            async for response in behavior(request, context):
                yield response

    return wrapper
