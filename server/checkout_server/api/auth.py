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

A key counts for the whole of a stream, not only at its start: the interceptor keeps the
streams it admitted (uploads, REST or gRPC, WriteUpload, WatchStatus), and when the keys in
force change (`keys_changed`, called by the key ring after a reload) it asks each stream's key
again. A stream its key no longer admits as the same client with a role allowed the call
(the key removed, or the whole file refused) ends with UNAUTHENTICATED API_KEY_REVOKED: its
task is cancelled where it waits (on its client, on storage, on the watch feed), so its
handler cleans up as for any cancelled call (an upload's object is removed, a resumable
session keeps its committed parts), and the cancellation is answered here with the error. A
stream waiting for gRPC to send a response (a slow reader) ends at its next step instead, or
is cancelled after REVOKED_SEND_GRACE_S. Unary calls are short and are not followed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import grpc

from checkout_api.checkout.v1 import checkout_pb2 as pb

from .. import errors
from ..domain import ANONYMOUS, Principal, Role
from .interceptors import rewrap
from .streams import drain, stepwise

# What a refused caller's upload stream may make the server read and drop (api/streams.py):
# enough for the refusal to reach a client that streams quickly, little for one that abuses it.
REFUSED_DRAIN_MAX_BYTES = 8 * 1024 * 1024
# How long a stream whose key was revoked while gRPC was sending its response may take to
# reach its next step (where it ends with API_KEY_REVOKED) before it is cancelled outright.
REVOKED_SEND_GRACE_S = 1.0

_Context = grpc.aio.ServicerContext[Any, Any]
_Unary = Callable[[Any, _Context], Awaitable[Any]]
_Stream = Callable[[Any, _Context], AsyncIterator[Any]]

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
    "GetVideo": Permission.READ,
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


class _OpenStream:
    """A stream admitted by its key, for as long as it runs: `revoke` ends it."""

    def __init__(
        self, method: str, permission: Permission, context: _Context, principal: Principal
    ) -> None:
        task = asyncio.current_task()
        assert task is not None, "a stream runs in a task"
        self.task = task
        self.method = method
        self.permission = permission
        self.context = context
        self.principal = principal
        self.revoked = False
        self._in_step = False
        self._cancelled = False  # by `revoke`, not yet answered
        self._grace: asyncio.TimerHandle | None = None

    def revoke(self) -> None:
        """End the stream with API_KEY_REVOKED: at once when its handler runs (a step),
        else at its next step (cancelled after REVOKED_SEND_GRACE_S if none comes)."""
        if self.revoked:
            return
        self.revoked = True
        if self._in_step:
            self._cancel()
        else:
            self._grace = asyncio.get_running_loop().call_later(REVOKED_SEND_GRACE_S, self._cancel)

    def _cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self.task.cancel()

    def close(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
        if self._cancelled:  # cancelled but answered otherwise (it had finished meanwhile)
            self._cancelled = False
            self.task.uncancel()

    @contextmanager
    def step(self) -> Iterator[None]:
        """One step of the stream's handler (all of it for an upload): ApiKeyRevoked before it
        when the key was revoked, or in place of the cancellation `revoke` made (when it was
        not also its client's, its deadline's or the server's)."""
        if self.revoked:
            raise errors.ApiKeyRevoked()
        self._in_step = True
        try:
            yield
        except asyncio.CancelledError:
            if self._cancelled:
                self._cancelled = False
                if self.task.uncancel() == 0:
                    raise errors.ApiKeyRevoked() from None
            raise
        finally:
            self._in_step = False


class AuthInterceptor:
    """Admits a call when its token is a key of `keys` whose role has the method's permission,
    and ends the streams whose key no longer does (`keys_changed`)."""

    def __init__(self, keys: Authenticator) -> None:
        missing = {m.name for m in SERVICE.methods} - set(METHOD_PERMISSIONS)
        if missing:  # a new RPC must be given its permission here
            raise RuntimeError(f"no permission declared for {sorted(missing)}")
        self._keys = keys
        self._streams: set[_OpenStream] = set()
        self.revoked_streams_total = 0  # for the metrics

    @property
    def open_streams(self) -> int:
        """Streams admitted and running now."""
        return len(self._streams)

    def keys_changed(self) -> None:
        """The keys in force changed: end every open stream whose key no longer admits it as
        the same client with a role allowed the call. Never blocks (one hash per stream)."""
        for stream in list(self._streams):
            try:
                principal = self.admit(stream.method, stream.permission, stream.context)
            except errors.ServiceError:
                principal = None
            if principal != stream.principal and not stream.revoked:
                stream.revoke()
                self.revoked_streams_total += 1

    @contextmanager
    def _open(
        self, method: str, permission: Permission, context: _Context, principal: Principal
    ) -> Iterator[_OpenStream]:
        stream = _OpenStream(method, permission, context, principal)
        self._streams.add(stream)
        try:
            yield stream
        finally:
            self._streams.discard(stream)
            stream.close()

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        permission = permission_of(method)
        if permission is Permission.PUBLIC:
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
                if rpc_type == "unary":
                    return await behavior(request, context)
                with self._open(method, permission, context, principal) as stream, stream.step():
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

            with self._open(method, permission, context, principal) as stream:
                responses = stepwise(behavior(request, context), as_principal)
                try:
                    while True:
                        with stream.step():
                            try:
                                response = await anext(responses)
                            except StopAsyncIteration:
                                return
                        yield response
                finally:
                    await responses.aclose()

        return wrapper
