"""TLS settings of the server (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE): what must be
set together, how the wiring reads the files, and the SDK's and CLI's client certificate
options. The handshakes themselves are tested in tests/integration/test_tls.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkout_client import open_channel
from checkout_client.cli import EXIT_USAGE, CliError, build_parser, read_local_files
from checkout_server.config import ServerSettings
from checkout_server.errors import ConfigError
from checkout_server.wiring.server import ServerTLS

pytestmark = pytest.mark.timeout(20)

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "server.pem").write_bytes(CERT)
    (tmp_path / "server.key").write_bytes(KEY)
    (tmp_path / "ca.pem").write_bytes(CERT)
    return {
        "TLS_CERT_FILE": str(tmp_path / "server.pem"),
        "TLS_KEY_FILE": str(tmp_path / "server.key"),
        "TLS_CLIENT_CA_FILE": str(tmp_path / "ca.pem"),
    }


def test_tls_is_off_by_default() -> None:
    settings = ServerSettings.from_env({})
    assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) == (
        "",
        "",
        "",
    )
    assert ServerTLS.from_settings(settings) is None


def test_tls_settings_from_the_environment(files: dict[str, str]) -> None:
    settings = ServerSettings.from_env(files)
    assert settings.tls_cert_file == files["TLS_CERT_FILE"]
    assert settings.tls_key_file == files["TLS_KEY_FILE"]
    assert settings.tls_client_ca_file == files["TLS_CLIENT_CA_FILE"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["TLS_CERT_FILE"], "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
        (["TLS_KEY_FILE"], "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
        (["TLS_CLIENT_CA_FILE"], "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE"),
        (
            ["TLS_CERT_FILE", "TLS_CLIENT_CA_FILE"],
            "TLS_CERT_FILE and TLS_KEY_FILE must be set together",
        ),
    ],
)
def test_incomplete_tls_settings_are_a_config_error(
    files: dict[str, str], given: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerSettings.from_env({name: files[name] for name in given})


def test_cert_without_key_in_code_and_in_replace_is_a_config_error(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="TLS_KEY_FILE"):
        ServerSettings(tls_cert_file=files["TLS_CERT_FILE"])
    settings = ServerSettings.from_env(files)
    with pytest.raises(ConfigError, match="TLS_CERT_FILE and TLS_KEY_FILE"):
        settings.replace(tls_key_file="")


def test_wiring_reads_the_files(files: dict[str, str]) -> None:
    tls = ServerTLS.from_settings(ServerSettings.from_env(files))
    assert tls == ServerTLS(private_key=KEY, certificate_chain=CERT, client_ca=CERT)
    without_ca = {k: v for k, v in files.items() if k != "TLS_CLIENT_CA_FILE"}
    tls = ServerTLS.from_settings(ServerSettings.from_env(without_ca))
    assert tls is not None
    assert tls.client_ca is None


@pytest.mark.parametrize("variable", ["TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"])
def test_an_unreadable_file_is_a_config_error_naming_its_variable(
    files: dict[str, str], tmp_path: Path, variable: str
) -> None:
    missing = str(tmp_path / "missing.pem")
    settings = ServerSettings.from_env({**files, variable: missing})
    with pytest.raises(ConfigError, match=rf"^{variable}: cannot read .*missing\.pem"):
        ServerTLS.from_settings(settings)


def test_a_file_without_pem_is_a_config_error(files: dict[str, str]) -> None:
    swapped = {**files, "TLS_CERT_FILE": files["TLS_KEY_FILE"]}
    with pytest.raises(ConfigError, match=r"TLS_CERT_FILE: .* holds no PEM CERTIFICATE"):
        ServerTLS.from_settings(ServerSettings.from_env(swapped))
    swapped = {**files, "TLS_KEY_FILE": files["TLS_CERT_FILE"]}
    with pytest.raises(ConfigError, match=r"TLS_KEY_FILE: .* holds no PEM PRIVATE KEY"):
        ServerTLS.from_settings(ServerSettings.from_env(swapped))


# --- the SDK and the CLI ------------------------------------------------------------------------


def test_open_channel_needs_both_certificate_and_key() -> None:
    with pytest.raises(ValueError, match="certificate_chain and private_key"):
        open_channel("localhost:1", certificate_chain=CERT)
    with pytest.raises(ValueError, match="certificate_chain and private_key"):
        open_channel("localhost:1", root_certificates=CERT, private_key=KEY)


def test_cli_reads_cert_and_key(files: dict[str, str]) -> None:
    args = build_parser().parse_args(
        ["health", "--cert", files["TLS_CERT_FILE"], "--key", files["TLS_KEY_FILE"]]
    )
    read_local_files(args)
    assert (args.certificate_chain, args.private_key, args.root_certificates) == (CERT, KEY, None)
    before = build_parser().parse_args(["--cert", "c.pem", "--key", "k.pem", "health"])
    assert (before.cert, before.key) == ("c.pem", "k.pem")


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--cert", "{TLS_CERT_FILE}"], "CLIENT_CERT_NEEDS_KEY"),
        (["--key", "{TLS_KEY_FILE}"], "CLIENT_CERT_NEEDS_KEY"),
        (["--cert", "{missing}", "--key", "{TLS_KEY_FILE}"], "CLIENT_CERT_UNREADABLE"),
        (["--cert", "{TLS_CERT_FILE}", "--key", "{missing}"], "CLIENT_KEY_UNREADABLE"),
    ],
)
def test_cli_refuses_half_or_unreadable_client_certificates(
    files: dict[str, str], tmp_path: Path, options: list[str], reason: str
) -> None:
    values = {**files, "missing": str(tmp_path / "missing.pem")}
    args = build_parser().parse_args(["health", *(o.format(**values) for o in options)])
    with pytest.raises(CliError) as refused:
        read_local_files(args)
    assert (refused.value.reason, refused.value.exit_code) == (reason, EXIT_USAGE)
