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
from typing import Any, TypeVar, cast

import grpc

from .. import errors
from .auth import PUBLIC_SERVICES, REFUSED_DRAIN_MAX_BYTES
from .interceptors import rewrap
from .streams import drain

_Context = grpc.aio.ServicerContext[Any, Any]
_Unary = Callable[[Any, _Context], Awaitable[Any]]
_Stream = Callable[[Any, _Context], AsyncIterator[Any]]
_Behavior = TypeVar("_Behavior", _Unary, _Stream)


class ShutdownGate:
    """Admits every call until `close()`; from then on refuses the new ones but those of the
    public services (grpc.health.v1, reflection). It wraps inside the ErrorInterceptor, so its
    refusals are ordinary errors."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if method.lstrip("/").rpartition("/")[0] in PUBLIC_SERVICES:
            return handler
        return rewrap(
            handler,
            lambda rpc_type, behavior: self._gated(_refuse_unary(rpc_type, behavior), behavior),
            lambda rpc_type, behavior: self._gated(_refuse_stream(rpc_type, behavior), behavior),
        )

    def _gated(self, refuse: _Behavior, behavior: _Behavior) -> _Behavior:
        """`behavior` while open, `refuse` once closed (either's coroutine or async generator,
        as it is: the ErrorInterceptor outside awaits or iterates it)."""

        def gated(request: Any, context: _Context) -> Any:
            return (refuse if self.closed else behavior)(request, context)

        return cast(_Behavior, gated)


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
