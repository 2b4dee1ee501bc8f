"""Every PyMongo exception, translated into the service's errors at the adapters' boundary.

Both MongoDB adapters (the server's outbox, the relay's store) wrap every call in
`translated`, so callers see only errors.py's classes:

- ExecutionTimeout, WTimeoutError (the server's own deadline), NetworkTimeout (no answer
  within the socket timeout on a connection that was up: a slow query, such as a listing
  FerretDB sorts in Go, not an outage): DatabaseTimeout (DEADLINE_EXCEEDED, retriable);
- the other ConnectionFailures (AutoReconnect, NotPrimaryError,
  ServerSelectionTimeoutError, WaitQueueTimeoutError), CursorNotFound, ProtocolError,
  InvalidOperation (a client closed at shutdown), and an OperationFailure labelled
  RetryableWriteError: DatabaseUnavailable (UNAVAILABLE, retriable);
- any other PyMongoError or BSONError (a refused command, a document too large, ...):
  DatabaseError (INTERNAL, not retriable).

A DuplicateKeyError is an outcome, not a failure: adapters catch it inside the block where a
unique index decides a race. One that escapes is a bug and becomes DatabaseError.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from bson.errors import BSONError
from pymongo.errors import (
    ConnectionFailure,
    CursorNotFound,
    ExecutionTimeout,
    InvalidOperation,
    NetworkTimeout,
    OperationFailure,
    ProtocolError,
    PyMongoError,
    WTimeoutError,
)

from ..errors import DatabaseError, DatabaseTimeout, DatabaseUnavailable, ServiceError

log = logging.getLogger(__name__)


def translate(exc: PyMongoError | BSONError) -> ServiceError:
    """The service error for a PyMongo exception (see the table above)."""
    if isinstance(exc, ExecutionTimeout | WTimeoutError | NetworkTimeout):
        return DatabaseTimeout()
    if isinstance(exc, ConnectionFailure | CursorNotFound | ProtocolError | InvalidOperation):
        return DatabaseUnavailable()
    if isinstance(exc, OperationFailure) and exc.has_error_label("RetryableWriteError"):
        return DatabaseUnavailable()
    return DatabaseError()


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Raise the service error of any PyMongo exception of the block; `action` names the
    operation in the log line that keeps the vendor's error."""
    try:
        yield
    except (PyMongoError, BSONError) as exc:
        error = translate(exc)
        level = logging.WARNING if error.retriable else logging.ERROR
        log.log(level, "mongodb %s failed: %r", action, exc, extra={"reason": error.reason})
        raise error from exc
