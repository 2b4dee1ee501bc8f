"""REST multipart uploads through a real Envoy to the in-process server, edge cases of the
body: no boundary, two file parts, a truncated body, an oversized field, text fields before
the file, a late `bucket`. Every refusal leaves nothing behind: no object, no open multipart
upload in either allowed bucket, no outbox message, no status record.

The Envoy is the module's own (its upstream port fixed for the module); each test's server
binds that port, with the test's own database and buckets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_server.config import ServerSettings
from checkout_server.outbox.document import Document
from checkout_server.wiring.server import App, create_app
from devstack import free_port
from tests.helpers import MiB, has_cyrillic, mp4_bytes, sha256_hex
from tests.integration import curl
from tests.integration.envoy_front import Front, envoy_front
from tests.integration.storage_checks import (
    object_keys,
    object_sha256,
    pending_uploads,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BOUNDARY = "checkout-test-boundary"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """The module's Envoy, in front of a port that each test's server binds."""
    with envoy_front(tmp_path_factory.mktemp("rest-multipart"), [free_port()]) as front:
        yield front


@pytest.fixture
async def rest_app(settings: ServerSettings, front: Front) -> AsyncIterator[App]:
    app = await create_app(settings.replace(grpc_addr=f"127.0.0.1:{front.upstreams[0]}"))
    await app.start()
    yield app
    await app.stop(grace_s=1)


def part(name: str, value: bytes, *, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    headers = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename:
        headers += "Content-Type: video/mp4\r\n"
    return headers.encode() + b"\r\n" + value + b"\r\n"


def form(*parts: bytes, closed: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if closed else b"")


async def post(
    front: Front,
    body: bytes,
    tmp_path: Path,
    *,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
    query: str = "",
) -> tuple[int, Any]:
    """POST `body` as it is to /api/upload_video with curl; (HTTP status, JSON body)."""
    path = tmp_path / "body.bin"
    path.write_bytes(body)
    return await curl.answer(
        "-X",
        "POST",
        "-H",
        f"Content-Type: {content_type}",
        "--data-binary",
        f"@{path}",
        f"{front.url}/api/upload_video{query}",
    )


def reason(body: Any) -> str:
    assert has_cyrillic(body["message"]), body
    return str(body["details"][0]["reason"])


async def assert_no_residue(
    s3: Minio,
    settings: ServerSettings,
    outbox: AsyncCollection[Document],
    statuses: AsyncCollection[Document],
) -> None:
    """Nothing of a refused upload anywhere: objects, open multipart uploads (in every allowed
    bucket: the late bucket names the other one), outbox messages, status records."""
    for bucket in sorted(settings.allowed_buckets):
        await wait_until(partial(_no_uploads, s3, bucket), what=f"no open upload in {bucket}")
        assert await object_keys(s3, bucket, prefix="") == []
    assert await outbox.count_documents({}) == 0
    assert await statuses.count_documents({}) == 0


async def _no_uploads(s3: Minio, bucket: str) -> bool:
    return await pending_uploads(s3, bucket) == 0


# Two storage parts (5 MiB in the tests' settings): refusals after the file's start find a
# multipart upload open, which must be aborted.
VIDEO = mp4_bytes(11 * MiB, seed=11)


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        pytest.param(
            "multipart/form-data",
            form(part("file", VIDEO, filename="v.mp4")),
            "INVALID_FORM",
            id="no boundary",
        ),
        pytest.param(
            None,
            form(part("file", VIDEO, filename="a.mp4"), part("file", b"x", filename="b.mp4")),
            "INVALID_FORM",
            id="two file parts",
        ),
        pytest.param(
            None,
            form(part("file", VIDEO, filename="v.mp4"), closed=False)[: -3 * 1024],
            "INVALID_FORM",
            id="truncated body",
        ),
        pytest.param(
            None,
            form(part("filename", b"a" * 2000), part("file", VIDEO, filename="v.mp4")),
            "INVALID_FORM",
            id="oversized field before the file",
        ),
        pytest.param(
            None,
            form(part("file", VIDEO, filename="v.mp4"), part("filename", b"a" * 2000)),
            "INVALID_FORM",
            id="oversized field after the file",
        ),
        pytest.param(
            None,
            form(part("sha256", b"0" * 64), part("file", VIDEO, filename="v.mp4")),
            "CHECKSUM_MISMATCH",
            id="wrong sha256 before the file",
        ),
        pytest.param(
            None,
            form(part("bucket", b"x"), part("filename", b"v.mp4")),
            "MISSING_FILE",
            id="no file part",
        ),
    ],
)
async def test_malformed_multipart_is_refused_and_leaves_nothing(
    rest_app: App,
    front: Front,
    tmp_path: Path,
    s3: Minio,
    settings: ServerSettings,
    outbox_collection: AsyncCollection[Document],
    status_collection: AsyncCollection[Document],
    content_type: str | None,
    body: bytes,
    expected: str,
) -> None:
    if content_type is None:
        status, answer = await post(front, body, tmp_path)
    else:
        status, answer = await post(front, body, tmp_path, content_type=content_type)
    assert (status, reason(answer)) == (400, expected), answer
    await assert_no_residue(s3, settings, outbox_collection, status_collection)


async def test_text_fields_before_the_file_set_the_upload(
    rest_app: App,
    front: Front,
    tmp_path: Path,
    s3: Minio,
    other_bucket: str,
    status_collection: AsyncCollection[Document],
) -> None:
    body = form(
        part("bucket", other_bucket.encode()),
        part("filename", "клип.mp4".encode()),
        part("sha256", sha256_hex(VIDEO).encode()),
        part("size_bytes", str(len(VIDEO)).encode()),
        part("idempotency_key", b"rest-key-1"),
        part("file", VIDEO, filename="ignored.mp4"),
    )
    status, answer = await post(front, body, tmp_path)
    assert status == 200, answer
    assert answer["bucket"] == other_bucket
    assert answer["sha256"] == sha256_hex(VIDEO)
    assert await object_sha256(s3, other_bucket, answer["object_key"]) == (
        len(VIDEO),
        sha256_hex(VIDEO),
    )
    record = await status_collection.find_one({"_id": answer["event_id"]})
    assert record is not None
    assert record["payload"]["filename"] == "клип.mp4"
    assert record["idempotency_key"] == "rest-key-1"

    # The same key again: the first upload's result, nothing stored twice.
    status, again = await post(front, body, tmp_path)
    assert (status, again["event_id"], again["deduplicated"]) == (200, answer["event_id"], True)
    assert await object_keys(s3, other_bucket) == [answer["object_key"]]


async def test_a_late_bucket_must_name_the_bucket_the_file_went_to(
    rest_app: App,
    front: Front,
    tmp_path: Path,
    s3: Minio,
    settings: ServerSettings,
    bucket: str,
    other_bucket: str,
    outbox_collection: AsyncCollection[Document],
    status_collection: AsyncCollection[Document],
) -> None:
    # Another allowed bucket after the file: the file is already streaming into the
    # default bucket, so it is refused (and removed), not silently kept in the wrong one.
    late_other = form(part("file", VIDEO, filename="v.mp4"), part("bucket", other_bucket.encode()))
    status, answer = await post(front, late_other, tmp_path)
    assert (status, reason(answer)) == (400, "BUCKET_NOT_ALLOWED"), answer
    assert other_bucket in answer["message"]
    await assert_no_residue(s3, settings, outbox_collection, status_collection)

    # Naming the bucket the file went to is fine, late or not (here chosen by the query).
    late_same = form(part("file", VIDEO, filename="v.mp4"), part("bucket", other_bucket.encode()))
    status, answer = await post(front, late_same, tmp_path, query=f"?bucket={other_bucket}")
    assert status == 200, answer
    assert answer["bucket"] == other_bucket
    assert await object_keys(s3, bucket) == []
    assert await object_keys(s3, other_bucket) == [answer["object_key"]]
