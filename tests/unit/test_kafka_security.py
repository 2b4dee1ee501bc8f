"""Kafka client security settings (checkout_common.kafka_security), read alike by the relay
(RelaySettings) and the runner (RunnerSettings): what each combination gives aiokafka's
clients, and the combinations refused at start, each naming its variables. The broker side is
tests/integration/test_kafka_auth.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from checkout_common.settings import EnvSettings
from checkout_runner.config import RunnerSettings
from checkout_runner.errors import ConfigError as RunnerConfigError
from checkout_server.config import RelaySettings
from checkout_server.errors import ConfigError as ServerConfigError
from tools.make_dev_certs import issue

pytestmark = pytest.mark.timeout(10)

PROCESSES: list[tuple[type[EnvSettings], type[Exception]]] = [
    (RelaySettings, ServerConfigError),
    (RunnerSettings, RunnerConfigError),
]
BOTH = pytest.mark.parametrize(
    ("process", "error"), PROCESSES, ids=[cls.__name__ for cls, _ in PROCESSES]
)
SASL = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_USERNAME": "relay",
    "KAFKA_SASL_PASSWORD": "s3cret-of-the-relay",
}


@BOTH
def test_plaintext_by_default_with_no_credentials(
    process: type[EnvSettings], error: type[Exception]
) -> None:
    settings = process.from_env({})
    assert settings.kafka_client_security() == {"security_protocol": "PLAINTEXT"}  # type: ignore[attr-defined]


@BOTH
def test_sasl_plaintext_gives_scram_sha_512_with_the_user(
    process: type[EnvSettings], error: type[Exception]
) -> None:
    settings = process.from_env({**SASL, "KAFKA_SECURITY_PROTOCOL": " sasl_plaintext "})
    assert settings.kafka_client_security() == {  # type: ignore[attr-defined]
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "relay",
        "sasl_plain_password": "s3cret-of-the-relay",
    }
    assert "s3cret" not in repr(settings)


@BOTH
def test_the_password_comes_from_its_file(
    process: type[EnvSettings], error: type[Exception], tmp_path: Path
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("from-the-file\n")
    env = {**SASL, "KAFKA_SASL_PASSWORD_FILE": str(secret)}
    options = process.from_env(env).kafka_client_security()  # type: ignore[attr-defined]
    assert options["sasl_plain_password"] == "from-the-file"


@BOTH
def test_sasl_ssl_verifies_the_broker_with_the_ca_file(
    process: type[EnvSettings], error: type[Exception], tmp_path: Path
) -> None:
    ca = issue(tmp_path, "ca").cert_file
    env = {
        **SASL,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "scram-sha-256",
        "KAFKA_SSL_CAFILE": str(ca),
    }
    options = process.from_env(env).kafka_client_security()  # type: ignore[attr-defined]
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1


@BOTH
def test_ssl_without_a_ca_file_uses_the_systems_cas(
    process: type[EnvSettings], error: type[Exception]
) -> None:
    options = process.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL"}).kafka_client_security()  # type: ignore[attr-defined]
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


@BOTH
@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
            "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_USERNAME and "
            "KAFKA_SASL_PASSWORD",
        ),
        (
            {**SASL, "KAFKA_SASL_PASSWORD": ""},
            "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_USERNAME and "
            "KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "relay"},
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SASL_USERNAME": "relay", "KAFKA_SASL_PASSWORD": "s3cret-of-the-relay"},
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are used only with "
            "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT",
        ),
        (
            {**SASL, "KAFKA_SECURITY_PROTOCOL": "SSL"},
            "are used only with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL, not SSL",
        ),
        (
            {**SASL, "KAFKA_SASL_MECHANISM": "PLAIN"},
            "KAFKA_SASL_MECHANISM=PLAIN sends KAFKA_SASL_PASSWORD unencrypted",
        ),
        ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM: Input should be"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL: Input should be"),
        (
            {**SASL, "KAFKA_SSL_CAFILE": "/etc/ssl/ca.pem"},
            "KAFKA_SSL_CAFILE is used only with KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, "
            "not SASL_PLAINTEXT",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CAFILE: no file /nonexistent/ca.pem",
        ),
        (
            {**SASL, "KAFKA_SASL_PASSWORD": "change-me-kafka-relay"},
            "KAFKA_SASL_PASSWORD: holds a placeholder",
        ),
    ],
)
def test_combinations_that_cannot_work_stop_the_process(
    process: type[EnvSettings], error: type[Exception], env: dict[str, str], message: str
) -> None:
    with pytest.raises(error, match=message) as refused:
        process.from_env(env)
    assert "s3cret" not in str(refused.value)


@BOTH
def test_allowed_plain_over_tls(process: type[EnvSettings], error: type[Exception]) -> None:
    env = {**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"}
    options = process.from_env(env).kafka_client_security()  # type: ignore[attr-defined]
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "PLAIN")


def test_the_relay_and_the_runner_read_one_environment_alike() -> None:
    env = {**SASL, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"}
    relay, runner = RelaySettings.from_env(env), RunnerSettings.from_env(env)
    assert relay.kafka_client_security() == runner.kafka_client_security()
    assert RelaySettings.from_env({}).kafka_client_security() == (
        RunnerSettings.from_env({}).kafka_client_security()
    )
