"""The MinIO adapter's request headers: checksummed bodies go unsigned, the rest as before."""

from __future__ import annotations

import asyncio
import hashlib
import io

import pytest
from miniopy_async.api import Minio
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


@pytest.mark.parametrize(
    "creds", [CREDS, Credentials("a", "b", session_token="t")], ids=["keys", "session"]
)
async def test_a_request_without_body_is_signed_as_miniopy_does_without_a_thread(
    client: ChecksummedMinio, creds: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected, _ = await Minio._build_headers(client, "127.0.0.1:9", {"Range": "x"}, None, creds)

    async def no_thread(*args: object) -> object:
        raise AssertionError("a thread hop to hash an empty body")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    headers, _ = await client._build_headers("127.0.0.1:9", {"Range": "x"}, None, creds)
    assert headers.pop("x-amz-date")
    assert expected.pop("x-amz-date")
    assert headers == expected
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"").hexdigest()
