"""Settings from the environment: names, defaults, secrets from files, clear errors; the
relay's own checks; settings built in code never read the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkout_runner.config import RunnerSettings
from checkout_runner.errors import ConfigError as RunnerConfigError
from checkout_server.config import MiB, ProcessSettings, RelaySettings, ServerSettings
from checkout_server.errors import ConfigError


def test_defaults_match_the_seed_service() -> None:
    settings = ServerSettings.from_env({})
    assert settings.minio_endpoint == "minio:9000"
    assert (settings.minio_access_key, settings.minio_secret_key) == ("minioadmin", "minioadmin")
    assert settings.mongo_db == "main_db"
    assert settings.default_bucket == "videos"
    assert settings.allowed_buckets == frozenset({"videos"})
    # Not the seed's: loopback until authentication is on (the image sets both).
    assert settings.grpc_addr == "127.0.0.1:50051"
    assert settings.metrics_addr == "127.0.0.1:9463"
    assert RunnerSettings.from_env({}).runner_metrics_addr == "127.0.0.1:9465"


def test_values_from_the_environment() -> None:
    settings = ServerSettings.from_env(
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
    settings = ServerSettings.from_env({"ADMIN_TOKEN": "plain", "ADMIN_TOKEN_FILE": str(secret)})
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
        ServerSettings.from_env(env)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY_SHARDS": "0"}, "RELAY_SHARDS must be between 1 and 1024"),
        ({"RELAY_SHARDS": "1025"}, "RELAY_SHARDS must be between 1 and 1024"),
        ({"RELAY_SHARDS": "many"}, "RELAY_SHARDS must be an integer"),
        (
            {"RELAY_LEASE_TTL_S": "4"},
            "RELAY_LEASE_TTL_S must be more than twice RELAY_CLOCK_SKEW_S",
        ),
        (
            {"RELAY_CLOCK_SKEW_S": "5"},
            "RELAY_LEASE_TTL_S must be more than twice RELAY_CLOCK_SKEW_S",
        ),
        ({"RELAY_BATCH_SIZE": "0"}, "RELAY_BATCH_SIZE and RELAY_SWEEP_BATCH must be positive"),
        ({"RELAY_SWEEP_BATCH": "0"}, "RELAY_BATCH_SIZE and RELAY_SWEEP_BATCH must be positive"),
        ({"RELAY_POLL_INTERVAL_S": "0"}, "RELAY_POLL_INTERVAL_S and RELAY_SEND_TIMEOUT_S"),
        ({"RELAY_SEND_TIMEOUT_S": "-1"}, "RELAY_POLL_INTERVAL_S and RELAY_SEND_TIMEOUT_S"),
        (
            {"RELAY_BACKOFF_INITIAL_S": "0"},
            "need 0 < RELAY_BACKOFF_INITIAL_S <= RELAY_BACKOFF_MAX_S",
        ),
        ({"RELAY_BACKOFF_MAX_S": "0.1"}, "need 0 < RELAY_BACKOFF_INITIAL_S <= RELAY_BACKOFF_MAX_S"),
        ({"KAFKA_LINGER_MS": "soon"}, "KAFKA_LINGER_MS must be an integer"),
    ],
)
def test_bad_relay_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelaySettings.from_env(env)


def test_the_other_checks_of_today_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="RESULT_KEY_TEMPLATE needs a folder"):
        ServerSettings.from_env({"RESULT_KEY_TEMPLATE": "{video_id}.json"})
    with pytest.raises(ConfigError, match="UPLOAD_MEMORY_BUDGET_BYTES must hold two parts"):
        ServerSettings.from_env({"UPLOAD_MEMORY_BUDGET_BYTES": str(10 * MiB)})
    with pytest.raises(ConfigError, match="UPLOAD_MAX_BYTES must be positive"):
        ServerSettings.from_env({"UPLOAD_MAX_BYTES": "0"})
    # Every problem is reported, not only the first.
    with pytest.raises(ConfigError, match=r"MONGO_TIMEOUT_MS must be .*; MINIO_SECURE must be"):
        ServerSettings.from_env({"MONGO_TIMEOUT_MS": "1.5", "MINIO_SECURE": "t"})


def test_relay_defaults_and_values() -> None:
    settings = RelaySettings.from_env({"RELAY_SHARDS": "4", "MONGO_URI": "mongodb://db:1/"})
    assert settings.relay_shards == 4
    assert settings.mongo_uri == "mongodb://db:1/"
    assert "mongodb://db:1/" not in repr(settings)
    assert settings.relay_metrics_addr == "127.0.0.1:9464"
    assert settings.kafka_topic == "checkout.videos.v1"


@pytest.mark.parametrize("value", ["", "  "])
def test_relay_metrics_addr_set_but_empty_disables(value: str) -> None:
    assert RelaySettings.from_env({"RELAY_METRICS_ADDR": value}).relay_metrics_addr == ""
    # Any other variable set but empty keeps its default.
    assert RelaySettings.from_env({"RELAY_HEALTH_ADDR": value}).relay_health_addr == "0.0.0.0:50052"


def test_empty_or_blank_values_keep_the_default() -> None:
    settings = ServerSettings.from_env({"GRPC_ADDR": " ", "UPLOAD_MAX_BYTES": "", "LOG_LEVEL": ""})
    assert settings.grpc_addr == "127.0.0.1:50051"
    assert settings.log_level == "INFO"
    assert settings == ServerSettings()


def test_flags_and_case() -> None:
    for word in ("1", "true", "Yes", " on "):
        assert ServerSettings.from_env({"MINIO_SECURE": word}).minio_secure is True
    for word in ("0", "false", "NO", "off"):
        assert ServerSettings.from_env({"MINIO_SECURE": word}).minio_secure is False
    settings = ServerSettings.from_env({"LOG_LEVEL": "debug", "LOG_FORMAT": "JSON"})
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")


def test_every_secret_may_come_from_a_file(tmp_path: Path) -> None:
    env = {}
    for name in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MONGO_URI", "ADMIN_TOKEN"):
        (tmp_path / name).write_text(f"  {name.lower()}-from-file\n")
        env[f"{name}_FILE"] = str(tmp_path / name)
    settings = ServerSettings.from_env(env)
    assert settings.minio_access_key == "minio_access_key-from-file"
    assert settings.minio_secret_key == "minio_secret_key-from-file"
    assert settings.mongo_uri == "mongo_uri-from-file"
    assert settings.admin_token == "admin_token-from-file"
    assert "from-file" not in repr(settings)
    # Not a secret: a _FILE variable means nothing.
    assert (
        ServerSettings.from_env({"GRPC_ADDR_FILE": str(tmp_path / "MONGO_URI")}) == ServerSettings()
    )


def test_each_process_carries_only_its_own_settings() -> None:
    server, relay = ServerSettings(), RelaySettings()
    assert not hasattr(server, "relay_shards")
    assert not hasattr(server, "kafka_topic")
    assert not hasattr(relay, "grpc_addr")
    assert not hasattr(relay, "minio_endpoint")
    # Both read the sections they share from the same variables.
    env = {"MONGO_DB": "shared", "LOG_LEVEL": "warning", "STARTUP_TIMEOUT_S": "3"}
    for settings in (ServerSettings.from_env(env), RelaySettings.from_env(env)):
        assert (settings.mongo_db, settings.log_level, settings.startup_timeout_s) == (
            "shared",
            "WARNING",
            3.0,
        )
    with pytest.raises(ConfigError, match="RELAY_SHARDS"):
        ServerSettings(relay_shards=3)  # type: ignore[call-arg]


def test_settings_built_in_code_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_ADDR", "10.0.0.1:1")
    monkeypatch.setenv("INSECURE_PUBLIC_WITHOUT_AUTH", "true")
    monkeypatch.setenv("RELAY_SHARDS", "3")
    monkeypatch.setenv("MONGO_DB", "from_env")
    assert ServerSettings().grpc_addr == "127.0.0.1:50051"
    assert ServerSettings(mongo_db="code").mongo_db == "code"
    assert RelaySettings().relay_shards == 16
    # from_env() without a mapping reads os.environ.
    assert ServerSettings.from_env().grpc_addr == "10.0.0.1:1"
    assert RelaySettings.from_env().relay_shards == 3


def test_settings_are_frozen_and_replace_validates_again() -> None:
    settings = ServerSettings()
    for name in ("mongo_db", "allowed_buckets"):
        with pytest.raises(ValueError, match="frozen"):
            setattr(settings, name, None)
    copy = settings.replace(mongo_db="other", default_bucket="raw")
    assert (copy.mongo_db, settings.mongo_db) == ("other", "main_db")
    assert copy.allowed_buckets == frozenset({"videos", "raw"})  # the default bucket is added
    with pytest.raises(ConfigError, match="UPLOAD_PART_BYTES must be between"):
        settings.replace(upload_part_bytes=1024)
    with pytest.raises(ConfigError, match="RELAY_SHARDS must be between"):
        RelaySettings().replace(relay_shards=0)
    with pytest.raises(ConfigError, match="UPLOAD_PART_BYTES must be between"):
        ServerSettings(upload_part_bytes=1024)


@pytest.mark.parametrize("cls", [ServerSettings, RelaySettings])
def test_every_field_documents_its_variable(cls: type[ProcessSettings]) -> None:
    for name, field in cls.model_fields.items():
        assert field.description, name
        assert field.description.startswith(f"{name.upper()}: "), name


@pytest.mark.parametrize("address", ["0.0.0.0:50051", "[::]:50051", "10.0.0.7:1", "checkout:1"])
def test_an_address_others_reach_needs_authentication(address: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AUTH_ENABLED is off") as refused:
        ServerSettings.from_env({"GRPC_ADDR": address})
    assert "INSECURE_PUBLIC_WITHOUT_AUTH" in str(refused.value)
    keys = str(tmp_path / "keys.toml")
    authed = {"GRPC_ADDR": address, "AUTH_ENABLED": "true", "AUTH_KEYS_FILE": keys}
    assert ServerSettings.from_env(authed).grpc_addr == address
    insecure = {"GRPC_ADDR": address, "INSECURE_PUBLIC_WITHOUT_AUTH": "true"}
    assert ServerSettings.from_env(insecure).insecure_public_without_auth


@pytest.mark.parametrize(
    "address", ["127.0.0.1:1", "127.8.9.10:1", "[::1]:1", "localhost:1", "unix:/tmp/s.sock"]
)
def test_loopback_needs_no_authentication(address: str) -> None:
    assert ServerSettings.from_env({"GRPC_ADDR": address}).grpc_addr == address


@pytest.mark.parametrize(
    ("settings", "variable", "value"),
    [
        (ServerSettings, "MINIO_SECRET_KEY", "change-me-minio-secret"),
        (ServerSettings, "MONGO_URI", "mongodb://checkout:change-me-mongo-password@mongo/"),
        (ServerSettings, "ADMIN_TOKEN", "change-me-admin-token"),
        (RelaySettings, "MONGO_URI", "mongodb://checkout:change-me-mongo-password@mongo/"),
        (RunnerSettings, "MINIO_SECRET_KEY", "change-me-minio-secret"),
    ],
)
def test_a_placeholder_secret_of_the_example_stops_the_process(
    settings: type[ServerSettings | RelaySettings | RunnerSettings], variable: str, value: str
) -> None:
    with pytest.raises((ConfigError, RunnerConfigError)) as refused:
        settings.from_env({variable: value})
    message = str(refused.value)
    assert variable in message
    assert "placeholder" in message
    assert value not in message.replace("change-me...", "")  # nor is the secret itself


@pytest.mark.parametrize(
    ("settings", "targets"),
    [
        (ServerSettings, {"RELAY_WAKE_TARGETS": "relay:50052"}),
        (ServerSettings, {"WATCH_WAKE_TARGETS": "other:50051"}),
        (RelaySettings, {"WATCH_WAKE_TARGETS": "checkout:50051"}),
    ],
)
def test_wake_up_targets_need_the_secret_that_signs_them(
    settings: type[ServerSettings | RelaySettings], targets: dict[str, str]
) -> None:
    with pytest.raises(ConfigError, match="needs WAKE_SECRET"):
        settings.from_env(targets)
    with pytest.raises(ConfigError, match="WAKE_SECRET needs at least 16 characters"):
        settings.from_env({**targets, "WAKE_SECRET": "short"})
    signed = settings.from_env({**targets, "WAKE_SECRET": "sixteen-chars-ok"})
    assert signed.wake_secret == "sixteen-chars-ok"
    assert "sixteen-chars-ok" not in repr(signed)


def test_the_relays_wake_up_gap_is_within_its_poll() -> None:
    assert RelaySettings.from_env({}).relay_wake_min_gap_s == 0.05
    with pytest.raises(ConfigError, match="RELAY_WAKE_MIN_GAP_S"):
        RelaySettings.from_env({"RELAY_WAKE_MIN_GAP_S": "5", "RELAY_POLL_INTERVAL_S": "2"})
