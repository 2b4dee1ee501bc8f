"""ObjectStorage on MinIO / S3 through miniopy-async.

A part's body is the list of chunks the pipeline collected, written to the socket one after
the other (`_ChunksBody`): never joined into one buffer, never copied again on the way.

Large objects go through an S3 multipart upload whose parts arrive in order from the
upload pipeline, one at a time, so the server holds about one part per upload. An object
smaller than one part is written with a single PUT. Abort is explicit and also runs on
cancellation.

Integrity without hashing every byte twice: every part and every single PUT carries an
`x-amz-checksum-crc32` header, which MinIO (and S3) verify before storing anything
(`XAmzContentChecksumMismatch` otherwise), and its payload is sent as `UNSIGNED-PAYLOAD`
instead of an S3 v4 payload signature (a SHA-256 of the body, which MinIO would compute
again). The headers, the checksum among them, stay signed. The whole file's SHA-256 is the
upload pipeline's. miniopy-async offers neither a per-part header nor an unsigned payload over
plain HTTP, so `ChecksummedMinio` adds the second and the writer calls the client's S3 API
methods (`_create_multipart_upload`, `_upload_part`, ...) directly; miniopy-async is pinned.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import BinaryIO, TypeVar, cast

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from aiohttp.typedefs import LooseHeaders
from miniopy_async.api import Minio
from miniopy_async.credentials.credentials import Credentials
from miniopy_async.datatypes import Part
from miniopy_async.deleteobjects import DeleteObject
from miniopy_async.error import MinioException, S3Error
from miniopy_async.helpers import DictType

from checkout_common.backoff import Backoff

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
_LIST_PAGE_MAX = 1000  # the most keys one S3 ListObjectsV2 answer holds
CHECKSUM_HEADER = "x-amz-checksum-crc32"
_UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()
# Bodies at least this large are checksummed in a worker thread (zlib releases the GIL), so
# the event loop goes on receiving the next part meanwhile; smaller ones are not worth a hop.
_THREAD_CHECKSUM_BYTES = 1024 * 1024


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


_T = TypeVar("_T")


async def missing_as_none(request: Awaitable[_T]) -> _T | None:
    """What the request answers, or None where S3 says there is no such object."""
    try:
        return await request
    except S3Error as exc:
        if exc.code in _MISSING_KEY_CODES:
            return None
        raise


@asynccontextmanager
async def object_body(
    client: Minio, bucket: str, key: str
) -> AsyncIterator[aiohttp.ClientResponse | None]:
    """The object's GET response, closed on leaving the block; None if there is no such
    object (inside `_translated`, like every call of the client)."""
    response = await missing_as_none(client.get_object(bucket, key))
    if response is None:
        yield None
        return
    try:
        yield response
    finally:
        response.close()


class ChecksummedMinio(Minio):
    """A Minio client that sends a request body carrying an `x-amz-checksum-crc32` header with
    `UNSIGNED-PAYLOAD` instead of hashing it for the signature (miniopy-async does so only
    over HTTPS, and adds a Content-MD5 there). Every other request is signed as before."""

    async def _build_headers(
        self,
        host: str,
        headers: LooseHeaders | DictType | None,
        body: bytes | BinaryIO | None,
        creds: Credentials | None,
    ) -> tuple[dict[str, str], datetime]:
        if body is None and creds is not None:
            return await self._build_bodiless_headers(host, headers, creds)
        if body is None or not isinstance(headers, dict) or CHECKSUM_HEADER not in headers:
            return await super()._build_headers(host, headers, body, creds)
        built, date = await super()._build_headers(host, headers, None, creds)
        built["Content-Length"] = str(_body_length(body))
        if creds:
            built["x-amz-content-sha256"] = _UNSIGNED_PAYLOAD
        return built, date

    async def _build_bodiless_headers(
        self, host: str, headers: LooseHeaders | DictType | None, creds: Credentials
    ) -> tuple[dict[str, str], datetime]:
        """A signed request without a body (HEAD, GET, DELETE) carries the SHA-256 of the empty
        payload, a constant. miniopy-async computes it in a worker thread for every such
        request over HTTP: a thread hop per status lookup, which on a busy event loop waits
        for the GIL and lengthens the call by up to the interpreter's switch interval."""
        built, date = await super()._build_headers(host, headers, None, None)
        built["x-amz-content-sha256"] = _EMPTY_PAYLOAD_SHA256
        if creds.session_token:
            built["X-Amz-Security-Token"] = creds.session_token
        return built, date


def _body_length(body: bytes | BinaryIO) -> int:
    if isinstance(body, _ChunksBody):
        return body.size
    if isinstance(body, io.BytesIO):
        return body.getbuffer().nbytes
    if isinstance(body, bytes):
        return len(body)
    raise TypeError("a checksummed body is bytes, BytesIO or chunks")


class _ChunksBody(Payload):
    """A request body made of the chunks as they were received, written one after another
    (aiohttp waits for the socket to drain between them). Stateless, so a retry resends it."""

    _autoclose = True  # holds no resources

    def __init__(self, chunks: Sequence[bytes]) -> None:
        super().__init__(chunks)
        self._chunks = chunks
        self._size = sum(len(chunk) for chunk in chunks)

    @property
    def size(self) -> int:
        return self._size or 0

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._chunks).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        for chunk in self._chunks:
            await writer.write(chunk)


def _crc32(chunks: Sequence[bytes]) -> int:
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return crc


async def _checksum_headers(chunks: Sequence[bytes], size: int) -> DictType:
    """The `x-amz-checksum-crc32` header of the body (base64 of the big-endian CRC32)."""
    if size >= _THREAD_CHECKSUM_BYTES:
        crc = await asyncio.to_thread(_crc32, chunks)
    else:
        crc = _crc32(chunks)
    return {CHECKSUM_HEADER: base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")}


def _body(chunks: Sequence[bytes]) -> BinaryIO:
    # miniopy-async's signature says bytes or a file; ChecksummedMinio measures this body
    # itself and aiohttp takes any Payload.
    return cast(BinaryIO, _ChunksBody(chunks))


class MinioStorage:
    """Implements ports.ObjectStorage. The Minio client is built by the wiring and shared."""

    def __init__(self, client: Minio, *, abort_retry_s: float = 300.0) -> None:
        if not isinstance(client, ChecksummedMinio):  # only it can send the writers' bodies
            raise TypeError("MinioStorage needs a ChecksummedMinio (wiring.clients.minio_client)")
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
        """A writer whose bodies only ChecksummedMinio can send (see `_ChunksBody`)."""
        return MinioObjectWriter(self._client, bucket, key, content_type, self._abort_retry_s)

    async def delete(self, bucket: str, key: str) -> None:
        with _translated("delete"):
            await self._client.remove_object(bucket, key)

    async def stat(self, bucket: str, key: str) -> StoredObject | None:
        with _translated("stat"):
            found = await missing_as_none(self._client.stat_object(bucket, key))
        if found is None:
            return None
        return StoredObject(
            key=key,
            size_bytes=found.size or 0,
            last_modified=found.last_modified or datetime.now(UTC),
        )

    async def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes | None:
        with _translated("read"):
            async with object_body(self._client, bucket, key) as response:
                if response is None:
                    return None
                size = response.content_length or 0
                if size > max_bytes:
                    raise ObjectTooLarge(size)
                # StreamReader.read(n) returns what has arrived, up to n bytes: read to the
                # end, never more than one byte past the limit.
                data = bytearray()
                while chunk := await response.content.read(max_bytes + 1 - len(data)):
                    data += chunk
                    if len(data) > max_bytes:
                        raise ObjectTooLarge(len(data))
                return bytes(data)

    async def open_reader(self, bucket: str, key: str) -> MinioObjectReader | None:
        with _translated("open_reader"):
            response = await missing_as_none(self._client.get_object(bucket, key))
        if response is None:
            return None
        return MinioObjectReader(response)

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

    async def list_page(
        self, bucket: str, prefix: str, *, start_after: str, limit: int
    ) -> list[StoredObject]:
        if not 1 <= limit <= _LIST_PAGE_MAX:
            raise ValueError(f"a page is 1..{_LIST_PAGE_MAX} keys, not {limit}")
        page: list[StoredObject] = []
        # The client's ListObjectsV2 generator with `max-keys` = limit: its first request is
        # the whole page; it is closed before it would ask for the next one.
        listing = self._client._list_objects(
            bucket,
            prefix=prefix,
            start_after=start_after or None,
            max_keys=limit,
            encoding_type="url",
        )
        with _translated("list_page"):
            try:
                async for found in listing:
                    if found.object_name and not found.is_dir:
                        page.append(
                            StoredObject(
                                key=found.object_name,
                                size_bytes=found.size or 0,
                                # Unknown: taken for new (a sweep leaves it for a later round).
                                last_modified=found.last_modified or datetime.now(UTC),
                            )
                        )
                    if len(page) == limit:
                        break
            finally:
                await listing.aclose()
        return page

    async def _delete_batch(self, bucket: str, batch: list[DeleteObject]) -> int:
        failed = 0
        async for error in self._client.remove_objects(bucket, batch):
            failed += 1
            log.warning("could not delete %s/%s: %s", bucket, error.name, error.message)
        return len(batch) - failed

    async def ping(self) -> None:
        with _translated("ping"):
            await self._client.list_buckets()


class MinioObjectReader:
    """Implements ports.ObjectReader over one GET response. aiohttp stops reading the socket
    while its buffer is full (64 KiB), so a reader that is not read holds no more than that
    besides the bytes of one `read`."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.size_bytes = response.content_length or 0

    async def read(self, max_bytes: int) -> bytes:
        # StreamReader.read(n) returns what has arrived, up to n bytes: gather up to
        # `max_bytes`, so that every piece but the last is full.
        data = bytearray()
        with _translated("read"):
            while len(data) < max_bytes:
                chunk = await self._response.content.read(max_bytes - len(data))
                if not chunk:
                    break
                data += chunk
        return bytes(data)

    async def close(self) -> None:
        self._response.close()


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
        self._upload_id: str | None = None
        self._creating: asyncio.Future[str] | None = None
        self._parts: list[Part] = []
        # Set before the request that makes the object visible: if that request fails
        # ambiguously (timeout after the server committed), abort must delete the object.
        self._may_exist = False
        self._done = False

    async def write_part(self, chunks: Sequence[bytes]) -> None:
        with _translated("upload_part"):
            if self._upload_id is None:
                if self._creating is None:
                    self._creating = asyncio.ensure_future(
                        self._client._create_multipart_upload(
                            self._bucket, self._key, {"Content-Type": self._content_type}
                        )
                    )
                # Shielded: a write cancelled meanwhile still learns the upload id, so that
                # abort can remove the upload MinIO may have created already.
                self._upload_id = await asyncio.shield(self._creating)
            await self._upload_part(chunks)

    async def _upload_part(self, chunks: Sequence[bytes]) -> None:
        assert self._upload_id is not None
        number = len(self._parts) + 1
        size = sum(len(chunk) for chunk in chunks)
        etag = await self._client._upload_part(
            self._bucket,
            self._key,
            _body(chunks),  # type: ignore[arg-type]
            await _checksum_headers(chunks, size),
            self._upload_id,
            number,
        )
        self._parts.append(Part(number, etag))

    async def finish(self, last: Sequence[bytes]) -> None:
        with _translated("finish"):
            self._may_exist = True
            size = sum(len(chunk) for chunk in last)
            if self._upload_id is None:
                # Smaller than one part: one PUT, the only request of the whole upload.
                headers = await _checksum_headers(last, size)
                headers["Content-Type"] = self._content_type
                await self._client._put_object(self._bucket, self._key, _body(last), headers)
            else:
                if size:
                    await self._upload_part(last)
                await self._client._complete_multipart_upload(
                    self._bucket, self._key, self._upload_id, self._parts
                )
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
        if self._upload_id is None and self._creating is not None:
            try:
                self._upload_id = await self._creating
            except Exception:  # no upload was created (or MinIO expires it)
                self._creating = None
        if self._upload_id is not None and not self._done:
            try:
                await self._client._abort_multipart_upload(self._bucket, self._key, self._upload_id)
            except S3Error as exc:
                if exc.code != "NoSuchUpload":  # already aborted or completed
                    raise
        if self._may_exist:
            await self._client.remove_object(self._bucket, self._key)
