"""The drain before a stop: new calls are answered UNAVAILABLE SHUTTING_DOWN.

At SIGTERM the health service turns NOT_SERVING at once, but load balancers and clients only
notice at their next check. For SHUTDOWN_DRAIN_S the listener stays open and every new call
but health and reflection is refused with a status that says what to do (reconnect
elsewhere), instead of a connection refused; calls already running go on. CheckoutService's
own Health (REST `/api/health`) is refused too, so a REST health check sees 503 at once; only
grpc.health.v1 (NOT_SERVING) and reflection answer. Then the server stops (SHUTDOWN_GRACE_S
for what is still running).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from .. import errors
from .auth import PUBLIC_SERVICES, REFUSED_DRAIN_MAX_BYTES
from .interceptors import rewrap
from .streams import drain

_Context = grpc.aio.ServicerContext[Any, Any]
_Unary = Callable[[Any, _Context], Awaitable[Any]]
_Stream = Callable[[Any, _Context], AsyncIterator[Any]]

if TYPE_CHECKING:  # generic only in grpc-stubs
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class ShutdownGate(_ServerInterceptor):
    """Admits every call until `close()`; from then on refuses the new ones but those of the
    public services (grpc.health.v1, reflection). It sits inside the ErrorInterceptor, so its
    refusals are ordinary errors."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").rpartition("/")[0]
        if handler is None or not self.closed or service in PUBLIC_SERVICES:
            return handler
        return rewrap(handler, _refuse_unary, _refuse_stream)


def _refuse_unary(rpc_type: str, _: _Unary) -> _Unary:
    async def refuse(request: Any, context: _Context) -> Any:
        if rpc_type == "client_stream":  # an upload: its status must reach the client
            await drain(request, max_bytes=REFUSED_DRAIN_MAX_BYTES)
        raise errors.ShuttingDown()

    return refuse


def _refuse_stream(_: str, __: _Stream) -> _Stream:
    async def refuse(request: Any, context: _Context) -> AsyncIterator[Any]:
        raise errors.ShuttingDown()
        yield  # an async generator, as the handler it replaces

    return refuse
