"""A blocking client with the same methods as AsyncCheckoutClient, for scripts and code
without an event loop. It runs the async client on a private event loop (asyncio.Runner),
so both share one implementation; iterators are driven one item per loop run.

Not for use from inside a running event loop (use the async client there) and not
thread-safe: one client per thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ._client import DEFAULT_CHUNK_BYTES, AsyncCheckoutClient, StatusPage
from ._models import CleanupReport, Health, Operation, Request, Result, StatusUpdate, Upload
from ._upload import ProgressCallback, UploadSource

_T = TypeVar("_T")


async def _next(iterator: AsyncIterator[_T]) -> _T:
    return await anext(iterator)


class CheckoutClient:
    """Blocking client of checkout.v1.CheckoutService; takes the same arguments as
    `AsyncCheckoutClient` (except `channel`) and raises the same errors. Use as
    ``with CheckoutClient() as client:`` or call `close()`."""

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._closed = False
        try:
            self._client = self._run(self._create(address, kwargs))
        except BaseException:
            self._runner.close()
            raise

    @staticmethod
    async def _create(address: str | None, kwargs: dict[str, Any]) -> AsyncCheckoutClient:
        # The channel must be created on the loop that will use it.
        return AsyncCheckoutClient(address, **kwargs)

    @property
    def address(self) -> str:
        return self._client.address

    def __enter__(self) -> CheckoutClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel and the private event loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close())
        finally:
            self._runner.close()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self._runner.run(coroutine)

    def _iterate(self, iterator: AsyncIterator[_T]) -> Iterator[_T]:
        try:
            while True:
                try:
                    yield self._run(_next(iterator))
                except StopAsyncIteration:
                    return
        finally:
            if isinstance(iterator, AsyncGenerator) and not self._closed:
                self._run(iterator.aclose())

    def upload(
        self,
        source: UploadSource,
        *,
        bucket: str = "",
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
        content_type: str = "video/mp4",
        sha256: str | None = None,
        timeout_s: float | None = None,
        resumable: bool | None = None,
    ) -> Upload:
        """See `AsyncCheckoutClient.upload`."""
        return self._run(
            self._client.upload(
                source,
                bucket=bucket,
                chunk_size=chunk_size,
                on_progress=on_progress,
                idempotency_key=idempotency_key,
                filename=filename,
                content_type=content_type,
                sha256=sha256,
                timeout_s=timeout_s,
                resumable=resumable,
            )
        )

    def status(self, event_id: str) -> Operation:
        """See `AsyncCheckoutClient.status`."""
        return self._run(self._client.status(event_id))

    def list_page(
        self, *, status: str = "", page_size: int = 0, page_token: str = ""
    ) -> StatusPage:
        """See `AsyncCheckoutClient.list_page`."""
        return self._run(
            self._client.list_page(status=status, page_size=page_size, page_token=page_token)
        )

    def list_statuses(self, *, status: str = "", page_size: int = 0) -> Iterator[Operation]:
        """See `AsyncCheckoutClient.list_statuses`."""
        return self._iterate(self._client.list_statuses(status=status, page_size=page_size))

    def watch(self, event_id: str) -> Iterator[StatusUpdate]:
        """See `AsyncCheckoutClient.watch`."""
        return self._iterate(self._client.watch(event_id))

    def result(self, event_id: str) -> Result:
        """See `AsyncCheckoutClient.result`."""
        return self._run(self._client.result(event_id))

    def download(self, event_id: str, path: Path) -> int:
        """See `AsyncCheckoutClient.download`."""
        return self._run(self._client.download(event_id, path))

    def request(self, video_id: str, *, bucket: str = "") -> Request:
        """See `AsyncCheckoutClient.request`."""
        return self._run(self._client.request(video_id, bucket=bucket))

    def cleanup(self, *, admin_token: str) -> CleanupReport:
        """See `AsyncCheckoutClient.cleanup`."""
        return self._run(self._client.cleanup(admin_token=admin_token))

    def health(self) -> Health:
        """See `AsyncCheckoutClient.health`."""
        return self._run(self._client.health())
