"""Shared test helpers."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from checkout_runner.domain import VideoEvent
from checkout_server.domain import EventStatus, OutboxEvent, input_object_key
from checkout_server.errors import DuplicateIdempotencyKey
from checkout_server.ports import Outbox

MiB = 1024 * 1024


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float = 30,
    what: str = "condition",
) -> None:
    """Poll `check` (a function, or a coroutine function) until it holds: a readiness wait,
    not a sleep of a guessed length. It fails, naming `what`, once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


def off_the_event_loop(what: str) -> None:
    """Raise if called on a running event loop: `what` blocks for as long as a process takes
    to start, and the servers an async test runs in-process share the test's loop (a status
    feed held that long falls behind its liveness window). Call it through
    `asyncio.to_thread`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} blocks: call it through asyncio.to_thread in async code")


def outbox_event(event_id: str, *, at: datetime | None = None, **changes: Any) -> OutboxEvent:
    """A `new` event of a 1-byte video of the same id in `videos`, created and updated `at`
    (default: now); `changes` set any other field."""
    at = at or datetime.now(UTC)
    video_id = changes.pop("video_id", event_id)
    fields: dict[str, Any] = {
        "event_id": event_id,
        "video_id": video_id,
        "bucket": "videos",
        "object_key": input_object_key(video_id),
        "filename": "",
        "content_type": "video/mp4",
        "size_bytes": 1,
        "sha256": "",
        "status": EventStatus.NEW,
        "created_at": at,
        "updated_at": at,
    }
    return OutboxEvent(**(fields | changes))


def runner_event(event_id: str, video_id: str, bucket: str) -> VideoEvent:
    """An uploaded event as the detection runner has it from the relay's record."""
    return VideoEvent(
        event_id=event_id,
        video_id=video_id,
        bucket=bucket,
        object_key=input_object_key(video_id),
        size_bytes=0,
        created_at=datetime.now(UTC),
    )


def mp4_bytes(size: int, *, seed: int = 0) -> bytes:
    """`size` bytes that start like an MP4 (an ISO-BMFF `ftyp` box), then pseudo-random data."""
    header = (24).to_bytes(4, "big") + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
    if size <= len(header):
        return header[:size]
    body = hashlib.shake_256(seed.to_bytes(8, "big")).digest(min(size, 1 * MiB))
    repeats = -(-(size - len(header)) // len(body))
    return (header + body * repeats)[:size]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_key() -> str:
    return os.urandom(8).hex()


def error_info(exc: grpc.aio.AioRpcError) -> tuple[status_pb2.Status, Any]:
    """The rich status of a failed call and its one ErrorInfo, checking that the status
    agrees with the call's own code and message."""
    metadata = cast(Iterable[tuple[str, bytes]], exc.trailing_metadata() or ())
    details = [value for key, value in metadata if key == "grpc-status-details-bin"]
    assert len(details) == 1, f"no rich status in {exc!r}"
    status = status_pb2.Status.FromString(details[0])
    assert status.code == exc.code().value[0]
    assert status.message == exc.details()
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == "checkout.v1"
    return status, info


def error_details(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, str]:
    """(code, ErrorInfo reason, message) of a failed call."""
    status, info = error_info(exc)
    return exc.code(), info.reason, status.message


def has_cyrillic(text: str) -> bool:
    return any("а" <= c.lower() <= "я" for c in text)


def retry_delay_s(exc: grpc.aio.AioRpcError) -> float:
    """The seconds of the one google.rpc.RetryInfo of a failed call."""
    status, _ = error_info(exc)
    hints = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(hints) == 1, f"no RetryInfo in {exc!r}"
    retry = error_details_pb2.RetryInfo()
    hints[0].Unpack(retry)
    return float(retry.retry_delay.ToTimedelta().total_seconds())


class RacingOutbox:
    """A decorator of an Outbox port that forces the idempotency race: every
    `find_by_idempotency_key` answers only once `parties` callers have looked up (so none of
    them sees another's event, and only the insert's unique index can decide), and `add`
    counts the inserts it let through and the DuplicateIdempotencyKey refusals. Everything
    else goes to the real outbox unchanged."""

    def __init__(self, inner: Outbox, parties: int, *, timeout_s: float = 30) -> None:
        self._inner = inner
        self._parties = parties
        self._timeout_s = timeout_s
        self._looked_up = 0
        self._all_looked_up = asyncio.Event()
        self.added = 0
        self.duplicates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> OutboxEvent | None:
        found = await self._inner.find_by_idempotency_key(key, owner=owner)
        self._looked_up += 1
        if self._looked_up >= self._parties:
            self._all_looked_up.set()
        await asyncio.wait_for(self._all_looked_up.wait(), self._timeout_s)
        return found

    async def add(self, event: OutboxEvent) -> None:
        try:
            await self._inner.add(event)
        except DuplicateIdempotencyKey:
            self.duplicates += 1
            raise
        self.added += 1
