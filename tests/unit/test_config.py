"""Settings from the environment: names, defaults, secrets from files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkout_server.config import ConfigError, MiB, Settings


def test_defaults_match_the_seed_service() -> None:
    settings = Settings.from_env({})
    assert settings.minio_endpoint == "minio:9000"
    assert (settings.minio_access_key, settings.minio_secret_key) == ("minioadmin", "minioadmin")
    assert settings.mongo_db == "main_db"
    assert settings.default_bucket == "videos"
    assert settings.allowed_buckets == frozenset({"videos"})
    assert settings.grpc_addr == "0.0.0.0:50051"


def test_values_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MINIO_ENDPOINT": "s3.local:9000",
            "MINIO_SECURE": "true",
            "ALLOWED_BUCKETS": "archive, raw ,",
            "UPLOAD_PART_BYTES": str(16 * MiB),
            "SHUTDOWN_GRACE_S": "2.5",
        }
    )
    assert settings.minio_endpoint == "s3.local:9000"
    assert settings.minio_secure is True
    # The default bucket is always allowed.
    assert settings.allowed_buckets == frozenset({"archive", "raw", "videos"})
    assert settings.upload_part_bytes == 16 * MiB
    assert settings.shutdown_grace_s == 2.5


def test_secret_from_file_wins(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t\n")
    settings = Settings.from_env({"ADMIN_TOKEN": "plain", "ADMIN_TOKEN_FILE": str(secret)})
    assert settings.admin_token == "s3cr3t"
    assert "s3cr3t" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"UPLOAD_MAX_BYTES": "lots"}, "UPLOAD_MAX_BYTES must be an integer"),
        ({"MINIO_SECURE": "maybe"}, "MINIO_SECURE must be true or false"),
        ({"SHUTDOWN_GRACE_S": "soon"}, "SHUTDOWN_GRACE_S must be a number"),
        ({"UPLOAD_PART_BYTES": "1024"}, "UPLOAD_PART_BYTES must be between 5 MiB and 5 GiB"),
        ({"UPLOAD_MAX_BYTES": str(10**15)}, "more than 10,000 parts"),
        ({"ADMIN_TOKEN_FILE": "/nonexistent/token"}, "ADMIN_TOKEN_FILE: cannot read"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
