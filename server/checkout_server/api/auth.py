"""Authentication and roles: every call's bearer token is checked before its handler runs.

With authentication on (AUTH_ENABLED), `AuthInterceptor` reads `authorization: Bearer
<key>` from the call's metadata (Envoy passes the REST header on as it is), finds the key's
client and role (auth/keys.py) and admits the call when the role has the method's
permission. The caller is then `current_principal()` for the handler, which filters what an
uploader sees by it. The standard health and reflection services, and the service's own
Health, answer everyone.

Refusals are ServiceErrors (UNAUTHENTICATED without a valid key, PERMISSION_DENIED for a role
that may not make the call), so the ErrorInterceptor around this one sends them in the one
error shape, counts them and logs them. Neither the token nor its hash is ever logged.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from checkout_api.checkout.v1 import checkout_pb2 as pb

from .. import errors
from ..domain import ANONYMOUS, Principal, Role
from .interceptors import rewrap
from .streams import drain, stepwise

# What a refused caller's upload stream may make the server read and drop (api/streams.py):
# enough for the refusal to reach a client that streams quickly, little for one that abuses it.
REFUSED_DRAIN_MAX_BYTES = 8 * 1024 * 1024

_Context = grpc.aio.ServicerContext[Any, Any]
_Unary = Callable[[Any, _Context], Awaitable[Any]]
_Stream = Callable[[Any, _Context], AsyncIterator[Any]]

if TYPE_CHECKING:  # generic only in grpc-stubs
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

# Who makes the current call; ANONYMOUS when authentication is off (no interceptor sets it).
_principal: ContextVar[Principal] = ContextVar("principal", default=ANONYMOUS)


def current_principal() -> Principal:
    return _principal.get()


class Permission(enum.Enum):
    PUBLIC = "anyone, without a token"
    UPLOAD = "upload videos"
    READ = "read statuses and results (an uploader: of its own events)"
    REQUEST = "re-request processing (an uploader: of its own videos)"
    ADMIN = "delete everything (Cleanup)"


SERVICE = pb.DESCRIPTOR.services_by_name["CheckoutService"]
METHOD_PERMISSIONS: Mapping[str, Permission] = {
    "UploadVideo": Permission.UPLOAD,
    "UploadVideoHttp": Permission.UPLOAD,
    "StartResumableUpload": Permission.UPLOAD,
    "WriteUpload": Permission.UPLOAD,
    "WriteUploadHttp": Permission.UPLOAD,
    "QueryUploadStatus": Permission.UPLOAD,
    "CancelUpload": Permission.UPLOAD,
    "WatchStatus": Permission.READ,
    "ListStatuses": Permission.READ,
    "GetStatus": Permission.READ,
    "GetResult": Permission.READ,
    "CreateRequest": Permission.REQUEST,
    "Cleanup": Permission.ADMIN,
    "Health": Permission.PUBLIC,
}
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.UPLOADER: frozenset({Permission.UPLOAD, Permission.READ, Permission.REQUEST}),
    Role.READER: frozenset({Permission.READ}),
    Role.ADMIN: frozenset(Permission),
}
# Services that answer without a token: load balancers and grpcurl must reach them.
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Principal | None:
        """The principal whose key `token` is, or None."""


def permission_of(method: str) -> Permission:
    """What a call to `method` (/package.Service/Method) needs; a method this table does not
    know needs the admin role (closed by default)."""
    service, _, name = method.lstrip("/").rpartition("/")
    if service in PUBLIC_SERVICES:
        return Permission.PUBLIC
    if service == SERVICE.full_name:
        return METHOD_PERMISSIONS.get(name, Permission.ADMIN)
    return Permission.ADMIN


def parse_bearer(value: str) -> str | None:
    """The token of one `authorization` value, `Bearer <token>` (the scheme in any case), or
    None when the value is not one. The only place a bearer token is parsed."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The token of the call's `authorization: Bearer <token>`; Unauthenticated without one."""
    values = [v for k, v in metadata if k == "authorization"]
    if not values:
        raise errors.Unauthenticated("токен не передан")
    if len(values) > 1:
        raise errors.Unauthenticated("заголовок authorization передан несколько раз")
    token = parse_bearer(values[0] if isinstance(values[0], str) else values[0].decode("latin-1"))
    if token is None:
        raise errors.Unauthenticated("ожидается схема Bearer")
    return token


def bearer_token_or_none(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The call's bearer token as `bearer_token` reads it, or None without a valid one: for
    a call that checks a token of its own (Cleanup's ADMIN_TOKEN with authentication off)."""
    try:
        return bearer_token(metadata)
    except errors.Unauthenticated:
        return None


class AuthInterceptor(_ServerInterceptor):
    """Admits a call when its token is a key of `keys` whose role has the method's permission."""

    def __init__(self, keys: Authenticator) -> None:
        missing = {m.name for m in SERVICE.methods} - set(METHOD_PERMISSIONS)
        if missing:  # a new RPC must be given its permission here
            raise RuntimeError(f"no permission declared for {sorted(missing)}")
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        permission = permission_of(method)
        if handler is None or permission is Permission.PUBLIC:
            return handler
        return rewrap(
            handler,
            lambda rpc_type, behavior: self._unary(method, permission, rpc_type, behavior),
            lambda _, behavior: self._stream(method, permission, behavior),
        )

    def admit(self, method: str, permission: Permission, context: _Context) -> Principal:
        principal = self._keys.authenticate(bearer_token(context.invocation_metadata() or ()))
        if principal is None or principal.role is None:
            raise errors.Unauthenticated("токен не принят")
        if permission not in ROLE_PERMISSIONS[principal.role]:
            name = method.rpartition("/")[2]
            raise errors.PermissionDenied(
                f"роль «{principal.role.value}» не может вызвать {name}",
                role=principal.role.value,
                method=name,
            )
        return principal

    def _unary(
        self, method: str, permission: Permission, rpc_type: str, behavior: _Unary
    ) -> _Unary:
        async def wrapper(request: Any, context: _Context) -> Any:
            try:
                principal = self.admit(method, permission, context)
            except errors.ServiceError:
                if rpc_type == "client_stream":  # an upload: its status must reach the client
                    await drain(request, max_bytes=REFUSED_DRAIN_MAX_BYTES)
                raise
            token = _principal.set(principal)
            try:
                return await behavior(request, context)
            finally:
                _principal.reset(token)

        return wrapper

    def _stream(self, method: str, permission: Permission, behavior: _Stream) -> _Stream:
        async def wrapper(request: Any, context: _Context) -> AsyncIterator[Any]:
            principal = self.admit(method, permission, context)

            @contextmanager
            def as_principal() -> Iterator[None]:
                token = _principal.set(principal)
                try:
                    yield
                finally:
                    _principal.reset(token)

            responses = stepwise(behavior(request, context), as_principal)
            try:
                async for response in responses:
                    yield response
            finally:
                await responses.aclose()

        return wrapper
