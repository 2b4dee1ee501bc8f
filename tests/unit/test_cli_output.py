"""The `checkout` command in this process, over a scripted client: text from users and the
server (filenames, errors, ids) is printed as it is, never read as rich markup or emoji codes;
and no token leaves without TLS, refused before any connection."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from checkout_client import CleanupReport, Operation, StatusPage, StatusUpdate, cli
from checkout_client.cli import EXIT_OK, EXIT_USAGE

pytestmark = [pytest.mark.timeout(30)]

# Names and messages rich would turn into a link, a style or an emoji if it read them.
MARKUP = [
    "[link=https://evil.example]x[/link]",
    "[bold red]alarm[/bold red]",
    "[/]",
    ":warning: clip",
    "видео 🎬 [i].mp4",
]
WHEN = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


def operation(text: str) -> Operation:
    return Operation(
        event_id=f"{text}-event",
        status="failed",
        video_id="v",
        bucket=f"{text}-bucket",
        object_key="input/v.mp4",
        filename=text,
        size_bytes=1000,
        created_at=WHEN,
        updated_at=WHEN,
        error=f"{text} error",
    )


@dataclass
class Script:
    """What every client `checkout` makes answers with (`text`), and the clients it made."""

    text: str = ""
    made: list[ScriptedClient] = field(default_factory=list)


class ScriptedClient:
    """What `checkout` asks of AsyncCheckoutClient, answered with the script's text."""

    def __init__(self, script: Script, address: str | None, **options: Any) -> None:
        self.address = address or ""
        self.options = options
        self.text = script.text
        self.cleaned_with: list[str] = []
        script.made.append(self)

    async def __aenter__(self) -> ScriptedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def list_page(self, **_: Any) -> StatusPage:
        return StatusPage(operations=[operation(self.text)], total=1, next_page_token="")

    async def status(self, event_id: str) -> Operation:
        return operation(self.text)

    async def watch(self, event_id: str) -> AsyncIterator[StatusUpdate]:
        yield StatusUpdate(
            event_id=event_id, status="failed", video_id="v", updated_at=WHEN, error=self.text
        )

    async def cleanup(self, *, admin_token: str) -> CleanupReport:
        self.cleaned_with.append(admin_token)
        return CleanupReport(deleted_objects=0, deleted_events=0)


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Script:
    """`checkout` in this process makes scripted clients (and sees no CHECKOUT_* variable)."""
    for name in (cli.TOKEN_ENV, cli.ADMIN_TOKEN_ENV, "CHECKOUT_ADDR"):
        monkeypatch.delenv(name, raising=False)
    script = Script()
    monkeypatch.setattr(
        cli,
        "AsyncCheckoutClient",
        lambda address, **options: ScriptedClient(script, address, **options),
    )
    return script


def run_cli(argv: list[str]) -> int:
    """`checkout *argv` in this process: its exit code."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    return int(exited.value.code or 0)


@pytest.mark.parametrize("text", MARKUP)
@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["status"], ["{t}", "{t}-event", "{t} error"]),  # the table
        (["status", "E"], ["{t}", "{t}-event", "{t}-bucket", "{t} error"]),  # one event's fields
        (["watch", "E"], ["{t}"]),  # status lines
    ],
    ids=["status-table", "status-event", "watch"],
)
def test_user_and_server_text_is_printed_as_it_is(
    script: Script,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    shown: list[str],
    text: str,
) -> None:
    script.text = text
    code = run_cli(argv)

    out = capsys.readouterr().out
    assert code in (EXIT_OK, cli.EXIT_FAILED), out
    for expected in shown:
        assert expected.format(t=text) in out
    assert "\x1b" not in out  # no style, no OSC 8 link
    assert "⚠" not in out  # :warning: stays a code


def test_the_table_shows_a_markup_name_in_full_in_its_column(
    script: Script, capsys: pytest.CaptureFixture[str]
) -> None:
    name = script.text = "[link=https://evil.example]x[/link]"
    assert run_cli(["status"]) == EXIT_OK
    row = next(line for line in capsys.readouterr().out.splitlines() if "-event" in line)
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[:3] == [f"{name}-event", "failed", name]
    assert cells[-1] == f"{name} error"


def listening_socket() -> socket.socket:
    """A plain TCP port that counts nothing but would hold any connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    return server


def assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):  # nothing waits to be accepted
        server.accept()


@pytest.mark.parametrize(
    ("argv", "env", "reason"),
    [
        (["cleanup", "--yes", "--admin-token", "T"], {}, "ADMIN_TOKEN_NEEDS_TLS"),
        (["cleanup", "--yes"], {"CHECKOUT_ADMIN_TOKEN": "T"}, "ADMIN_TOKEN_NEEDS_TLS"),
        (["cleanup", "--yes"], {"CHECKOUT_TOKEN": "T"}, "TOKEN_NEEDS_TLS"),
        (["health"], {"CHECKOUT_TOKEN": "T"}, "TOKEN_NEEDS_TLS"),
    ],
    ids=["admin-flag", "admin-env", "bearer-for-cleanup", "bearer"],
)
def test_a_token_without_tls_is_refused_before_any_connection(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    reason: str,
) -> None:
    # The real client: were it made, the refused call would knock on this port.
    for name in (cli.TOKEN_ENV, cli.ADMIN_TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with listening_socket() as server:
        port = server.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            cli.main([*argv, "--addr", f"127.0.0.1:{port}"])
        assert_no_connection(server)

    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("checkout: ошибка: ")
    assert "только по TLS" in err
    assert err.endswith(f"({reason})\n")


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["cleanup", "--yes", "--tls", "--admin-token", "T"], {}),
        (["cleanup", "--yes", "--ca-cert", "{ca}"], {"CHECKOUT_ADMIN_TOKEN": "T"}),
    ],
    ids=["flag-with-tls", "env-with-ca-cert"],
)
def test_an_admin_token_goes_out_with_tls(
    script: Script,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")  # read, not checked, by the CLI
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert run_cli([arg.format(ca=ca) for arg in argv]) == EXIT_OK

    (client,) = script.made
    assert client.cleaned_with == ["T"]
    assert client.options["tls"] or client.options["root_certificates"]
