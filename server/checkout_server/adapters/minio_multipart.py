"""MultipartStorage on MinIO / S3: the multipart uploads of resumable sessions, one request
per call, with the same request bodies and checksums as `minio_storage` (a part is the list
of chunks it was received in, sent with an `x-amz-checksum-crc32` header that MinIO checks
before storing it, and an unsigned payload).

Unlike `MinioObjectWriter`, nothing here lives longer than one call: the upload id and the
parts' ETags are the session's facts, kept in the database, so any process may go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from miniopy_async.api import Minio
from miniopy_async.datatypes import Part
from miniopy_async.error import S3Error

from ..errors import MultipartUploadMissing, UploadPartConflict
from ..ports import OpenMultipart
from .minio_storage import (
    ChecksummedMinio,
    _body,
    _checksum_headers,
    _translated,
    missing_as_none,
    object_body,
)

log = logging.getLogger(__name__)

_MISSING_UPLOAD = "NoSuchUpload"
_PART_MISMATCH = frozenset({"InvalidPart", "InvalidPartOrder"})
# Read back for hashing in blocks of this size; each block is hashed in a worker thread.
_READ_BLOCK_BYTES = 4 * 1024 * 1024


def _update(digest: hashlib._Hash, blocks: list[bytes]) -> None:
    for block in blocks:
        digest.update(block)


class MinioMultipart:
    """Implements ports.MultipartStorage (the wiring builds the shared ChecksummedMinio)."""

    def __init__(self, client: Minio) -> None:
        if not isinstance(client, ChecksummedMinio):  # only it can send the part bodies
            raise TypeError("MinioMultipart needs a ChecksummedMinio")
        self._client = client

    async def create_multipart(self, bucket: str, key: str, content_type: str) -> str:
        with _translated("create_multipart"):
            return await self._client._create_multipart_upload(
                bucket, key, {"Content-Type": content_type}
            )

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, chunks: Sequence[bytes]
    ) -> str:
        size = sum(len(chunk) for chunk in chunks)
        with _translated("upload_part"):
            try:
                return await self._client._upload_part(
                    bucket,
                    key,
                    _body(chunks),  # type: ignore[arg-type]
                    await _checksum_headers(chunks, size),
                    upload_id,
                    number,
                )
            except S3Error as exc:
                if exc.code == _MISSING_UPLOAD:
                    raise MultipartUploadMissing(upload_id) from exc
                raise

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        with _translated("complete_multipart"):
            try:
                await self._client._complete_multipart_upload(
                    bucket, key, upload_id, [Part(number, etag) for number, etag in parts]
                )
            except S3Error as exc:
                if exc.code == _MISSING_UPLOAD:
                    raise MultipartUploadMissing(upload_id) from exc
                if exc.code in _PART_MISMATCH:  # a part's ETag is not what the storage holds
                    raise UploadPartConflict(detail="хранилище отклонило список частей") from exc
                raise

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        with _translated("abort_multipart"):
            try:
                await self._client._abort_multipart_upload(bucket, key, upload_id)
            except S3Error as exc:
                if exc.code != _MISSING_UPLOAD:
                    raise

    async def list_multipart(self, bucket: str, prefix: str) -> list[OpenMultipart]:
        found: list[OpenMultipart] = []
        key_marker: str | None = None
        upload_marker: str | None = None
        with _translated("list_multipart"):
            while True:
                # MinIO matches a prefix only against whole keys here: list all, then filter.
                page = await self._client._list_multipart_uploads(
                    bucket, key_marker=key_marker, upload_id_marker=upload_marker
                )
                for upload in page.uploads:
                    if upload.object_name.startswith(prefix) and upload.upload_id:
                        found.append(
                            OpenMultipart(
                                bucket=bucket,
                                key=upload.object_name,
                                upload_id=upload.upload_id,
                                initiated=upload.initiated_time or datetime.now(UTC),
                            )
                        )
                if not page.is_truncated:
                    return found
                key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker

    async def object_sha256(self, bucket: str, key: str) -> tuple[int, str] | None:
        digest = hashlib.sha256()
        size = 0
        with _translated("object_sha256"):
            async with object_body(self._client, bucket, key) as response:
                if response is None:
                    return None
                pending: list[bytes] = []
                pending_bytes = 0
                async for block in response.content.iter_chunked(_READ_BLOCK_BYTES):
                    size += len(block)
                    pending.append(block)
                    pending_bytes += len(block)
                    if pending_bytes >= _READ_BLOCK_BYTES:
                        await asyncio.to_thread(_update, digest, pending)
                        pending, pending_bytes = [], 0
                _update(digest, pending)
        return size, digest.hexdigest()

    async def object_size(self, bucket: str, key: str) -> int | None:
        with _translated("object_size"):
            found = await missing_as_none(self._client.stat_object(bucket, key))
        return None if found is None else found.size or 0

    async def delete_object(self, bucket: str, key: str) -> None:
        with _translated("delete_object"):
            await self._client.remove_object(bucket, key)
