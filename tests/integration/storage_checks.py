"""What a test can ask MinIO directly, to prove that nothing was left behind."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

from miniopy_async.api import Minio


async def object_keys(s3: Minio, bucket: str, prefix: str = "input/") -> list[str]:
    return [
        o.object_name or "" async for o in s3.list_objects(bucket, prefix=prefix, recursive=True)
    ]


async def pending_uploads(s3: Minio, bucket: str, key: str = "") -> int:
    """Multipart uploads still open for `key`, or in the whole bucket when `key` is empty
    (MinIO matches a non-empty prefix only against whole object keys)."""
    result = await s3._list_multipart_uploads(bucket, prefix=key)  # test-only use of the S3 call
    return len(result.uploads)


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 30, what: str = "condition"
) -> None:
    """Poll `check` until it holds: a readiness wait, not a sleep of a guessed length."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def object_sha256(s3: Minio, bucket: str, key: str) -> tuple[int, str]:
    """(size, sha256 hex) of a stored object, streamed (never whole in memory)."""
    digest = hashlib.sha256()
    size = 0
    response = await s3.get_object(bucket, key)
    try:
        async for block in response.content.iter_chunked(1 << 20):
            digest.update(block)
            size += len(block)
    finally:
        response.close()
    return size, digest.hexdigest()
