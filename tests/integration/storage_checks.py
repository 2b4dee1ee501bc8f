"""What a test can ask MinIO directly, to prove that nothing was left behind."""

from __future__ import annotations

import hashlib

from miniopy_async.api import Minio

# The readiness wait lives in tests.helpers (unit tests wait on conditions too); the
# integration tests import it from here as well.
from tests.helpers import wait_until

__all__ = ["object_keys", "object_sha256", "pending_uploads", "wait_until"]


async def object_keys(s3: Minio, bucket: str, prefix: str = "input/") -> list[str]:
    return [
        o.object_name or "" async for o in s3.list_objects(bucket, prefix=prefix, recursive=True)
    ]


async def pending_uploads(s3: Minio, bucket: str, key: str = "") -> int:
    """Multipart uploads still open for `key`, or in the whole bucket when `key` is empty
    (MinIO matches a non-empty prefix only against whole object keys)."""
    result = await s3._list_multipart_uploads(bucket, prefix=key)  # test-only use of the S3 call
    return len(result.uploads)


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
