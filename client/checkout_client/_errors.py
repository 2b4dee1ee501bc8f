"""Typed errors of the SDK: one exception class per gRPC status code, found through a
code -> class table (the google python-api-core pattern).

Every stub call is wrapped so that a failed call raises `from_grpc_error(e) from e`. The
exception carries what the server said: the gRPC code, the Russian message for people, and
the `google.rpc.ErrorInfo` reason (stable, for programs) with its metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "checkout.v1"
"""The ErrorInfo domain of every error the service sends."""

_DETAILS_KEY = "grpc-status-details-bin"


class CheckoutError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        code: the gRPC status code (the class's own code for errors made on the client).
        message: the human message, in Russian as the service writes it.
        reason: the ErrorInfo reason, e.g. ``"NOT_MP4"``; empty when the status had none
            (a proxy's or grpc's own error).
        metadata: the ErrorInfo metadata (may be empty).
        retry_after_s: the server's hint of when to try again (google.rpc.RetryInfo), or
            None when it sent none.
        retriable: whether the same call may succeed if repeated: a transient code
            (UNAVAILABLE), or any error the server sent a retry hint with (e.g.
            RESOURCE_EXHAUSTED ``TOO_MANY_UPLOADS``).
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    transient: ClassVar[bool] = False  # the code alone makes a retry worth it

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after_s = retry_after_s
        super().__init__(message)

    @property
    def retriable(self) -> bool:
        return self.transient or self.retry_after_s is not None

    def __str__(self) -> str:
        return f"{self.message} ({self.reason})" if self.reason else self.message

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


class Cancelled(CheckoutError):
    code = grpc.StatusCode.CANCELLED


class Unknown(CheckoutError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(CheckoutError):
    """The request was refused as malformed (e.g. ``NOT_MP4``, ``INVALID_EVENT_ID``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(CheckoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(CheckoutError):
    """No such event or video (e.g. ``EVENT_NOT_FOUND``)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CheckoutError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(CheckoutError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(CheckoutError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(CheckoutError):
    """The request is valid but conflicts with state (e.g. ``IDEMPOTENCY_KEY_REUSED``)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(CheckoutError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(CheckoutError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(CheckoutError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(CheckoutError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(CheckoutError):
    """The service or one of its dependencies is down; the same call may succeed later
    (e.g. ``STORAGE_UNAVAILABLE``, or no reason when the server itself is unreachable)."""

    code = grpc.StatusCode.UNAVAILABLE
    transient = True


class DataLoss(CheckoutError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(CheckoutError):
    """The call needs a (valid) token, e.g. Cleanup without the admin token."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[CheckoutError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def exception_class_for(code: grpc.StatusCode) -> type[CheckoutError]:
    """The SDK exception class raised for `code` (`Unknown` for a code without one)."""
    return _BY_CODE.get(code, Unknown)


def from_grpc_error(error: grpc.aio.AioRpcError) -> CheckoutError:
    """The typed exception for a failed call: its class from the status code, the message and
    the ErrorInfo from the rich status (`grpc-status-details-bin`) when the server sent one."""
    if _lost_in_transport(error):
        return Unavailable(
            "Соединение с сервером прервано во время отправки, повторите попытку",
            reason="STREAM_BROKEN",
        )
    cls = exception_class_for(error.code())
    message = error.details() or error.code().name
    reason = ""
    metadata: dict[str, str] = {}
    retry_after_s: float | None = None
    trailers = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    for key, value in trailers:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                hint = error_details_pb2.RetryInfo()
                detail.Unpack(hint)
                retry_after_s = hint.retry_delay.ToTimedelta().total_seconds()
    return cls(message, reason=reason, metadata=metadata, retry_after_s=retry_after_s)


def _lost_in_transport(error: grpc.aio.AioRpcError) -> bool:
    """grpc-python's asyncio client reports a write on a stream the peer has closed or reset
    (server killed, connection lost) as INTERNAL "Failed execute_batch", dropping whatever
    status arrived (grpc/grpc#36066). No server sends that, so it means the transport broke:
    as retriable as UNAVAILABLE (uploads carry an idempotency key)."""
    return (
        error.code() == grpc.StatusCode.INTERNAL
        and "execute_batch" in (error.debug_error_string() or "")
        and not any(
            key == _DETAILS_KEY
            for key, _ in cast(Iterable[tuple[str, object]], error.trailing_metadata() or ())
        )
    )


class ChecksumMismatch(DataLoss):
    """Raised by `upload` when the SHA-256 the server computed over what it stored differs
    from the one the client computed over what it sent (reason ``CLIENT_CHECKSUM_MISMATCH``).
    The server did store the upload; `event_id` names it."""

    def __init__(self, *, local: str, remote: str, event_id: str) -> None:
        super().__init__(
            f"SHA-256 сохранённого файла ({remote}) не совпадает с отправленным ({local})",
            reason="CLIENT_CHECKSUM_MISMATCH",
            metadata={"local": local, "remote": remote, "event_id": event_id},
        )
        self.event_id = event_id
