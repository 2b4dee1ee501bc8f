"""ObjectStorage on MinIO / S3 through miniopy-async.

Bodies are passed as BytesIO so aiohttp streams them instead of writing one large buffer.

Large objects go through an S3 multipart upload whose parts arrive in order from the
upload pipeline, one at a time, so the server holds about one part per upload. An object
smaller than one part is written with a single PUT. Abort is explicit and also runs on
cancellation (miniopy-async only aborts on `Exception`, not on `CancelledError`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import aiohttp
from miniopy_async.api import Minio
from miniopy_async.datatypes import MultipartUploader
from miniopy_async.deleteobjects import DeleteObject
from miniopy_async.error import MinioException, S3Error

from checkout_client.backoff import Backoff

from ..domain import StoredObject
from ..errors import ObjectTooLarge, ServiceError, StorageError, StorageUnavailable
from ..supervisor import retry_until

log = logging.getLogger(__name__)

_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
# S3 error codes that no retry changes: the server's credentials, permissions or buckets
# are wrong. Every other S3 error, and every network failure, may pass.
_PERMANENT_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}
)
_DELETE_BATCH = 1000  # the most one S3 DeleteObjects request takes


def translate(exc: Exception) -> ServiceError:
    """The service error of a storage failure: StorageError when S3 refused for good,
    else StorageUnavailable (network errors and timeouts included: the store is what is
    unreachable, so retrying later is the advice)."""
    if isinstance(exc, S3Error) and exc.code in _PERMANENT_CODES:
        return StorageError()
    return StorageUnavailable()


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn vendor and network errors into the service's errors at the adapter boundary
    (miniopy-async raises ValueError for answers it cannot parse)."""
    try:
        yield
    except (TimeoutError, MinioException, aiohttp.ClientError, OSError, ValueError) as exc:
        error = translate(exc)
        log.warning("storage %s failed: %r", action, exc, extra={"reason": error.reason})
        raise error from exc


class MinioStorage:
    """Implements ports.ObjectStorage. The Minio client is built by the wiring and shared."""

    def __init__(self, client: Minio, *, abort_retry_s: float = 300.0) -> None:
        self._client = client
        self._abort_retry_s = abort_retry_s

    async def ensure_bucket(self, bucket: str) -> None:
        with _translated("ensure_bucket"):
            if await self._client.bucket_exists(bucket):
                return
            try:
                await self._client.make_bucket(bucket)
            except S3Error as exc:  # created concurrently by another replica
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def open_writer(self, bucket: str, key: str, content_type: str) -> MinioObjectWriter:
        return MinioObjectWriter(self._client, bucket, key, content_type, self._abort_retry_s)

    async def delete(self, bucket: str, key: str) -> None:
        with _translated("delete"):
            await self._client.remove_object(bucket, key)

    async def stat(self, bucket: str, key: str) -> StoredObject | None:
        with _translated("stat"):
            try:
                found = await self._client.stat_object(bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_KEY_CODES:
                    return None
                raise
        return StoredObject(
            key=key,
            size_bytes=found.size or 0,
            last_modified=found.last_modified or datetime.now(UTC),
        )

    async def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes | None:
        with _translated("read"):
            try:
                response = await self._client.get_object(bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_KEY_CODES:
                    return None
                raise
            try:
                size = response.content_length or 0
                if size > max_bytes:
                    raise ObjectTooLarge(size)
                data = await response.content.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise ObjectTooLarge(len(data))
                return data
            finally:
                response.close()

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        deleted = 0
        with _translated("delete_prefix"):
            batch: list[DeleteObject] = []
            async for found in self._client.list_objects(bucket, prefix=prefix, recursive=True):
                if found.object_name:
                    batch.append(DeleteObject(found.object_name))
                if len(batch) == _DELETE_BATCH:
                    deleted += await self._delete_batch(bucket, batch)
                    batch = []
            if batch:
                deleted += await self._delete_batch(bucket, batch)
        return deleted

    async def _delete_batch(self, bucket: str, batch: list[DeleteObject]) -> int:
        failed = 0
        async for error in self._client.remove_objects(bucket, batch):
            failed += 1
            log.warning("could not delete %s/%s: %s", bucket, error.name, error.message)
        return len(batch) - failed

    async def ping(self) -> None:
        with _translated("ping"):
            await self._client.list_buckets()


_ABORT_BACKOFF = Backoff(initial_s=0.2, max_s=10.0)


class MinioObjectWriter:
    """Implements ports.ObjectWriter for one object."""

    def __init__(
        self, client: Minio, bucket: str, key: str, content_type: str, abort_retry_s: float
    ) -> None:
        self._client = client
        self._abort_retry_s = abort_retry_s
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._uploader: MultipartUploader | None = None
        self._parts = 0
        # Set before the request that makes the object visible: if that request fails
        # ambiguously (timeout after the server committed), abort must delete the object.
        self._may_exist = False
        self._done = False

    async def write_part(self, data: bytes) -> None:
        with _translated("upload_part"):
            if self._uploader is None:
                self._uploader = self._client.multipart_uploader(
                    self._bucket, self._key, content_type=self._content_type
                )
            self._parts += 1
            await self._uploader.upload_part(io.BytesIO(data), self._parts)

    async def finish(self, last: bytes) -> None:
        with _translated("finish"):
            self._may_exist = True
            if self._uploader is None:
                # Smaller than one part: one PUT (part_size == length takes miniopy-async's
                # single-request path, never its parallel multipart path).
                await self._client.put_object(
                    self._bucket,
                    self._key,
                    io.BytesIO(last),
                    len(last),
                    content_type=self._content_type,
                    part_size=len(last),
                )
            else:
                if last:
                    self._parts += 1
                    await self._uploader.upload_part(io.BytesIO(last), self._parts)
                await self._uploader.complete()
        self._done = True

    async def abort(self) -> None:
        # Storage may be the very thing that failed: retry with backoff for a while. MinIO's
        # own expiry of stale multipart uploads (24 h by default) is the last backstop.
        try:
            await retry_until(
                self._abort_once,
                timeout_s=self._abort_retry_s,
                what=f"abort of {self._bucket}/{self._key}",
                retry_if=lambda exc: True,
                backoff=_ABORT_BACKOFF,
            )
        except Exception as exc:
            log.error("giving up abort of %s/%s: %r", self._bucket, self._key, exc)

    async def _abort_once(self) -> None:
        if self._uploader is not None and not self._done:
            try:
                await self._uploader.abort()  # type: ignore[no-untyped-call]
            except S3Error as exc:
                if exc.code != "NoSuchUpload":  # already aborted or completed
                    raise
        if self._may_exist:
            await self._client.remove_object(self._bucket, self._key)
