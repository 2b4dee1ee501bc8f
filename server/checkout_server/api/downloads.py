"""Admission of video downloads (GetVideo), beside the uploads' (upload/admission.py) and the
watchers' (status/watch.py): a download holds a storage connection and a message in memory for
as long as its client takes to read it, so a client that opens many and reads slowly must not
hold them for ever nor take every place.

It owns
- concurrency: VIDEO_DOWNLOAD_MAX_CONCURRENT streams per process (TooManyDownloads) and
  VIDEO_DOWNLOAD_MAX_CONCURRENT_PER_CLIENT of one client (TooManyClientDownloads), refused
  before anything is read, with a retry hint. The client is its API key's owner, or with
  authentication off its address (api/clients.py names it);
- stalls: a message that waits VIDEO_DOWNLOAD_STALL_TIMEOUT_S to be sent (gRPC's flow control
  holds it while the client reads nothing, and Envoy's while its own client does not) ends
  the download (DownloadStalled): its handler is cancelled at once, which closes its storage
  read.

grpc-python cannot reset a server stream: the message gRPC holds, and the status after it,
go out only once the client reads again, and the call ends only then or when the client (or
Envoy's stream idle timeout) gives up. Until it ends, a cut download keeps its place, so that
a client's stalled streams count against its limit and the memory gRPC still holds for them
stays bounded by the limits.

Refusals and stalls are counted by reason in `refusals`, for the metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from .. import errors
from .interceptors import rich_status

log = logging.getLogger(__name__)

# What downloads are refused or cut for, each counted in `Downloads.refusals`.
DOWNLOAD_REFUSAL_REASONS = (
    errors.TooManyDownloads.reason,
    errors.TooManyClientDownloads.reason,
    errors.DownloadStalled.reason,
)

_Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, kw_only=True)
class DownloadLimits:
    max_concurrent: int = 32
    max_concurrent_per_client: int = 4
    stall_timeout_s: float = 30.0


class Place:
    """One admitted download's place, given back when its block ends, or, once it was cut,
    when its call has ended."""

    def __init__(self, downloads: Downloads, client: str) -> None:
        self._downloads = downloads
        self.client = client
        self.kept = False  # cut: given back by the stall's answer, not by the block
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._downloads._release(self.client)


class Downloads:
    """Admits GetVideo streams within `limits` and cuts those whose client stalls."""

    def __init__(self, limits: DownloadLimits | None = None) -> None:
        self._limits = limits or DownloadLimits()
        self._per_client: collections.Counter[str] = collections.Counter()
        self._answers: set[asyncio.Task[None]] = set()
        self.in_flight = 0  # places taken: streams sending, and cut ones not yet ended
        self.refusals: collections.Counter[str] = collections.Counter()

    def _refuse(self, error: errors.ServiceError) -> errors.ServiceError:
        self.refusals[error.reason] += 1
        return error

    @contextmanager
    def admit(self, client: str) -> Iterator[Place]:
        """One download of `client` for the block, or TooManyDownloads /
        TooManyClientDownloads when the process or the client has as many as it may."""
        limits = self._limits
        if self.in_flight >= limits.max_concurrent:
            raise self._refuse(errors.TooManyDownloads(limit=str(limits.max_concurrent)))
        if self._per_client[client] >= limits.max_concurrent_per_client:
            raise self._refuse(
                errors.TooManyClientDownloads(limit=str(limits.max_concurrent_per_client))
            )
        self.in_flight += 1
        self._per_client[client] += 1
        place = Place(self, client)
        try:
            yield place
        finally:
            if not place.kept:
                place.release()

    def _release(self, client: str) -> None:
        self.in_flight -= 1
        self._per_client[client] -= 1
        if not self._per_client[client]:
            del self._per_client[client]

    @contextmanager
    def sending(self, place: Place, context: _Context) -> Iterator[None]:
        """Around the `yield` of one message: when gRPC has not taken it (the handler is not
        resumed) within VIDEO_DOWNLOAD_STALL_TIMEOUT_S, the download is cut."""
        task = asyncio.current_task()
        assert task is not None, "a download runs in its call's task"
        timer = asyncio.get_running_loop().call_later(
            self._limits.stall_timeout_s, self._cut, task, place, context
        )
        try:
            yield
        finally:
            timer.cancel()

    def _cut(self, task: asyncio.Task[Any], place: Place, context: _Context) -> None:
        error = self._refuse(
            errors.DownloadStalled(stall_timeout_s=str(self._limits.stall_timeout_s))
        )
        log.warning("download cut: its client took nothing", extra={"reason": error.reason})
        place.kept = True
        answer = asyncio.ensure_future(_answer(context, error, place))
        self._answers.add(answer)
        answer.add_done_callback(self._answers.discard)
        task.cancel()


async def _answer(context: _Context, error: errors.ServiceError, place: Place) -> None:
    """Queue `error` behind the message gRPC holds; return once the call has ended (the client
    read on and got it, or went away), then give the place back."""
    status = rich_status(error)
    try:
        # Ends with AbortError once sent, ExecuteBatchError once the client is gone.
        with contextlib.suppress(Exception):
            await context.abort(status.code, status.details, status.trailing_metadata)
    finally:
        place.release()
