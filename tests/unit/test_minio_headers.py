"""The MinIO adapter's request headers: checksummed bodies go unsigned, the rest as before."""

from __future__ import annotations

import hashlib
import io

import pytest
from miniopy_async.credentials.credentials import Credentials

from checkout_server.adapters.minio_storage import CHECKSUM_HEADER, ChecksummedMinio

pytestmark = pytest.mark.timeout(10)

CREDS = Credentials("minioadmin", "minioadmin")
BODY = b"\x00\x00\x00\x18ftypisom" * 1000


@pytest.fixture
async def client() -> ChecksummedMinio:
    return ChecksummedMinio("127.0.0.1:9", access_key="a", secret_key="b", secure=False)


@pytest.mark.parametrize("body", [BODY, io.BytesIO(BODY)], ids=["bytes", "BytesIO"])
async def test_a_checksummed_body_is_sent_unsigned(
    client: ChecksummedMinio, body: bytes | io.BytesIO
) -> None:
    headers, _ = await client._build_headers(
        "127.0.0.1:9", {CHECKSUM_HEADER: "AAAAAA=="}, body, CREDS
    )
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert headers["Content-Length"] == str(len(BODY))
    assert headers[CHECKSUM_HEADER] == "AAAAAA=="  # signed with the other headers
    assert "Content-MD5" not in headers  # the CRC32 is the integrity check


async def test_any_other_body_is_signed_with_its_sha256(client: ChecksummedMinio) -> None:
    headers, _ = await client._build_headers("127.0.0.1:9", {}, BODY, CREDS)
    assert headers["x-amz-content-sha256"] == hashlib.sha256(BODY).hexdigest()
