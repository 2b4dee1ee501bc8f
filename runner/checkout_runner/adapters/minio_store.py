"""ObjectStore over miniopy-async: videos streamed to a local file, results in one PUT."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import aiohttp
from miniopy_async.api import Minio
from miniopy_async.error import MinioException, S3Error

from ..errors import RunnerError, StorageError, StorageUnavailable, VideoMissing, VideoTooLarge

log = logging.getLogger(__name__)

_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
# S3 refusals no retry changes: the runner's credentials, permissions or buckets are wrong.
_PERMANENT_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}
)
_CHUNK_BYTES = 1024 * 1024


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Vendor and network errors -> the runner's (miniopy-async raises ValueError for answers
    it cannot parse)."""
    try:
        yield
    except RunnerError:
        raise
    except (TimeoutError, MinioException, aiohttp.ClientError, OSError, ValueError) as exc:
        permanent = isinstance(exc, S3Error) and exc.code in _PERMANENT_CODES
        error: RunnerError = (StorageError if permanent else StorageUnavailable)(
            f"{action}: {type(exc).__name__}: {exc}"
        )
        log.warning("storage %s failed: %r", action, exc, extra={"reason": error.reason})
        raise error from exc


class MinioObjectStore:
    def __init__(self, client: Minio) -> None:
        """`client` is built once by the wiring and shared."""
        self._client = client

    async def download(self, bucket: str, key: str, dest: Path, *, max_bytes: int) -> int:
        with _translated("download"):
            try:
                response = await self._client.get_object(bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_KEY_CODES:
                    raise VideoMissing(f"{bucket}/{key}") from None
                raise
            try:
                declared = response.content_length or 0
                if declared > max_bytes:
                    raise VideoTooLarge(f"{declared} > {max_bytes} bytes")
                written = 0
                file: BinaryIO = await asyncio.to_thread(dest.open, "wb")
                try:
                    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                        written += len(chunk)
                        if written > max_bytes:
                            raise VideoTooLarge(f"over {max_bytes} bytes")
                        await asyncio.to_thread(file.write, chunk)
                finally:
                    await asyncio.to_thread(file.close)
                return written
            finally:
                response.close()
                response.release()

    async def written_at(self, bucket: str, key: str) -> datetime | None:
        with _translated("stat"):
            try:
                found = await self._client.stat_object(bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_KEY_CODES:
                    return None
                raise
        return found.last_modified

    async def put_json(self, bucket: str, key: str, data: bytes) -> None:
        with _translated("put"):
            # A known length under the 5 MiB part size is one PUT; S3 shows an object only
            # once its PUT is complete, so readers never see part of it.
            await self._client.put_object(
                bucket, key, io.BytesIO(data), len(data), content_type="application/json"
            )
