"""The one error model: every vendor exception translated at the adapters' boundary, retries
decided by `retriable`, and a supervisor that never lets a loop die."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import grpc
import pytest
from miniopy_async.error import S3Error
from pymongo.errors import (
    AutoReconnect,
    CursorNotFound,
    DuplicateKeyError,
    ExecutionTimeout,
    InvalidOperation,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from checkout_client.backoff import Backoff
from checkout_server import errors
from checkout_server.adapters import minio_storage, mongo_errors
from checkout_server.supervisor import Supervisor, retry_until

pytestmark = pytest.mark.timeout(10)


def _retryable_write() -> OperationFailure:
    return OperationFailure("not now", code=91, details={"errorLabels": ["RetryableWriteError"]})


@pytest.mark.parametrize(
    ("vendor", "expected", "code"),
    [
        (ExecutionTimeout("slow"), errors.DatabaseTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
        (WTimeoutError("slow"), errors.DatabaseTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
        (AutoReconnect("gone"), errors.DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
        (NetworkTimeout("slow"), errors.DatabaseTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
        (ServerSelectionTimeoutError("x"), errors.DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
        (CursorNotFound("x"), errors.DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
        (InvalidOperation("closed"), errors.DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
        (_retryable_write(), errors.DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
        (OperationFailure("bad", code=2), errors.DatabaseError, grpc.StatusCode.INTERNAL),
        (DuplicateKeyError("escaped", code=11000), errors.DatabaseError, grpc.StatusCode.INTERNAL),
    ],
)
def test_every_pymongo_error_is_translated(
    vendor: Exception, expected: type[errors.ServiceError], code: grpc.StatusCode
) -> None:
    with pytest.raises(expected) as caught, mongo_errors.translated("test"):
        raise vendor
    assert caught.value.code == code
    assert caught.value.retriable is (code != grpc.StatusCode.INTERNAL)
    assert caught.value.__cause__ is vendor


def _s3(code: str) -> S3Error:
    return S3Error(code, "refused", None, None, None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("vendor", "expected"),
    [
        (_s3("AccessDenied"), errors.StorageError),
        (_s3("NoSuchBucket"), errors.StorageError),
        (_s3("SlowDown"), errors.StorageUnavailable),
        (aiohttp.ClientConnectionError("refused"), errors.StorageUnavailable),
        (TimeoutError(), errors.StorageUnavailable),
    ],
)
def test_storage_errors_say_whether_a_retry_helps(
    vendor: Exception, expected: type[errors.ServiceError]
) -> None:
    translated = minio_storage.translate(vendor)
    assert type(translated) is expected
    assert translated.retriable is (expected is errors.StorageUnavailable)


def test_an_untranslated_timeout_becomes_deadline_exceeded() -> None:
    assert type(errors.from_exception(TimeoutError())) is errors.DeadlineExceeded
    assert type(errors.from_exception(ValueError())) is errors.ServiceError
    shutting_down = errors.ShuttingDown()
    assert errors.from_exception(shutting_down) is shutting_down
    assert errors.is_retriable(errors.PublisherUnavailable("no broker"))
    assert not errors.is_retriable(errors.NotAVideo())
    assert not errors.is_retriable(RuntimeError())


async def test_a_supervised_loop_logs_counts_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(backoff=Backoff(0.01, 0.02))
    outcomes: list[BaseException | None] = [errors.DatabaseUnavailable(), ValueError("bug")]
    rounds = 0
    done = asyncio.Event()

    async def round_() -> float:
        nonlocal rounds
        rounds += 1
        if outcomes:
            outcome = outcomes.pop(0)
            if outcome is not None:
                raise outcome
        done.set()
        return 60.0

    with caplog.at_level(logging.WARNING, logger="checkout_server.supervisor"):
        task = supervisor.spawn("demo", round_)
        await asyncio.wait_for(done.wait(), 5)
        await supervisor.stop()
    assert task.cancelled()
    assert rounds == 3
    assert supervisor.failures["demo"] == 2
    warning, error = caplog.records
    # A retriable error is a warning with its reason; anything else carries its traceback.
    assert (warning.levelno, warning.exc_info) == (logging.WARNING, None)
    assert warning.getMessage() == "demo: База данных недоступна, повторите попытку позже"
    assert error.levelno == logging.ERROR
    assert error.exc_info is not None


async def test_a_loop_stops_even_when_a_library_swallows_the_cancellation() -> None:
    supervisor = Supervisor(backoff=Backoff(0.01, 0.02))
    querying = asyncio.Event()

    async def round_() -> float:
        querying.set()
        try:
            await asyncio.Event().wait()  # a database query in flight
        except asyncio.CancelledError:
            raise AutoReconnect("operation cancelled") from None  # as PyMongo async does
        return 0.0

    task = supervisor.spawn("swallowing", round_)
    await asyncio.wait_for(querying.wait(), 5)
    await asyncio.wait_for(supervisor.stop(), 5)
    assert task.cancelled()
    assert supervisor.failures["swallowing"] == 0  # a stop, not a failure


async def test_a_supervised_loop_ends_after_its_round_when_stopped() -> None:
    supervisor = Supervisor()
    stop = asyncio.Event()
    rounds = 0

    async def round_() -> float:
        nonlocal rounds
        rounds += 1
        stop.set()
        return 60.0  # the pause ends as soon as `stop` is set

    await asyncio.wait_for(supervisor.run("demo", round_, stop), 5)
    assert rounds == 1


async def test_retry_until_retries_only_what_is_retriable() -> None:
    attempts = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise errors.StorageUnavailable()

    fast = Backoff(0.001, 0.002)
    await retry_until(flaky, timeout_s=5, what="test", backoff=fast)
    assert attempts == 3

    async def misconfigured() -> None:
        raise errors.StorageError()

    with pytest.raises(errors.StorageError):
        await retry_until(misconfigured, timeout_s=5, what="test", backoff=fast)

    async def down() -> None:
        raise errors.DatabaseUnavailable()

    with pytest.raises(errors.DatabaseUnavailable):
        await retry_until(down, timeout_s=0.01, what="test", backoff=fast)
