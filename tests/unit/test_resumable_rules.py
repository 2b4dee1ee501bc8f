"""Rules of resumable sessions that need no server: part sizes, persisted size, settings."""

from __future__ import annotations

import pytest

from checkout_server.config import MiB, ServerSettings
from checkout_server.errors import ConfigError
from checkout_server.ports import PartCommit
from checkout_server.upload.resumable import S3_MAX_PARTS, part_bytes_for
from checkout_server.upload.session_writer import persisted_size


@pytest.mark.parametrize(
    "size", [1, 5 * MiB, 8 * MiB * S3_MAX_PARTS, 8 * MiB * S3_MAX_PARTS + 1, 4 * 1024 * MiB * 10]
)
def test_the_part_size_keeps_a_session_under_10000_parts(size: int) -> None:
    part = part_bytes_for(size, 8 * MiB)
    assert part >= 8 * MiB
    assert part % MiB == 0
    assert -(-size // part) <= S3_MAX_PARTS


def commit(number: int, size: int = 5) -> PartCommit:
    return PartCommit(
        number=number,
        offset=(number - 1) * 5,
        size_bytes=size,
        etag="e",
        crc32c=0,
        running_crc32c=0,
    )


def test_persisted_size_counts_consecutive_parts_from_zero_only() -> None:
    assert persisted_size([]) == 0
    assert persisted_size([commit(1), commit(2)]) == 10
    assert persisted_size([commit(1), commit(3)]) == 5  # a gap stops it
    assert persisted_size([commit(2)]) == 0
    assert persisted_size([commit(1), commit(2, size=3)]) == 8


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"upload_lease_ttl_s": 4.0, "upload_clock_skew_s": 2.0}, "UPLOAD_LEASE_TTL_S"),
        ({"upload_session_ttl_s": 0.0}, "UPLOAD_SESSION_TTL_S"),
        ({"upload_max_duration_s": 0.0}, "UPLOAD_MAX_DURATION_S"),
        ({"upload_takeover_wait_s": 1.0}, "UPLOAD_TAKEOVER_WAIT_S"),
        ({"upload_session_ttl_s": 24 * 3600.0}, "STORAGE_STALE_UPLOADS_EXPIRY_S"),
        ({"upload_max_duration_s": 25 * 3600.0}, "STORAGE_STALE_UPLOADS_EXPIRY_S"),
        ({"storage_stale_uploads_expiry_s": 6 * 3600.0}, "UPLOAD_SESSION_TTL_S"),
    ],
)
def test_bad_resumable_settings_name_their_variable(changes: dict[str, float], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ServerSettings(**changes)  # type: ignore[arg-type]


def test_a_longer_minio_cleanup_allows_longer_sessions() -> None:
    settings = ServerSettings(
        storage_stale_uploads_expiry_s=72 * 3600.0, upload_session_ttl_s=48 * 3600.0
    )
    assert settings.upload_session_ttl_s == 48 * 3600.0
