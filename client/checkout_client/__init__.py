"""Python SDK and command line of checkout (guide: docs/client.md).

`AsyncCheckoutClient` (grpc.aio) and `CheckoutClient` (blocking, same methods) wrap
checkout.v1.CheckoutService; failures raise `CheckoutError` subclasses, one per gRPC code.
The generated stubs live in `checkout_api`.
"""

from ._channel import ADDR_ENV, DEFAULT_ADDR, RetryPolicy, default_address, open_channel
from ._client import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TIMEOUT_S,
    RESUMABLE_THRESHOLD_BYTES,
    AsyncCheckoutClient,
    StatusPage,
)
from ._errors import (
    ERROR_DOMAIN,
    Aborted,
    AlreadyExists,
    Cancelled,
    CheckoutError,
    ChecksumMismatch,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    exception_class_for,
    from_grpc_error,
)
from ._models import (
    TERMINAL_STATUSES,
    CleanupReport,
    Health,
    Operation,
    Request,
    Result,
    StatusUpdate,
    Upload,
    UploadProgress,
)
from ._sync import CheckoutClient
from ._upload import ProgressCallback, UploadSource

__all__ = [
    "ADDR_ENV",
    "DEFAULT_ADDR",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_TIMEOUT_S",
    "ERROR_DOMAIN",
    "RESUMABLE_THRESHOLD_BYTES",
    "TERMINAL_STATUSES",
    "Aborted",
    "AlreadyExists",
    "AsyncCheckoutClient",
    "Cancelled",
    "CheckoutClient",
    "CheckoutError",
    "ChecksumMismatch",
    "CleanupReport",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Health",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "Operation",
    "OutOfRange",
    "PermissionDenied",
    "ProgressCallback",
    "Request",
    "ResourceExhausted",
    "Result",
    "RetryPolicy",
    "StatusPage",
    "StatusUpdate",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "Upload",
    "UploadProgress",
    "UploadSource",
    "default_address",
    "exception_class_for",
    "from_grpc_error",
    "open_channel",
]
