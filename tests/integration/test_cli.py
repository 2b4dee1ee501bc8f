"""The `checkout` command line as a real process against the real server: what a person sees
in a terminal, JSON that scripts parse, one-line errors and the documented exit codes."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection

from checkout_client import AsyncCheckoutClient
from checkout_client.cli import (
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App
from devstack import FerretDB, free_port
from tests.helpers import MiB, has_cyrillic, mp4_bytes, sha256_hex
from tests.integration.apps import started_app
from tests.integration.console import checkout, in_terminal
from tests.integration.postgres_tables import analyze
from tests.integration.storage_checks import object_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Collection = AsyncCollection[dict[str, Any]]


@pytest.fixture
def address(app: App) -> str:
    return f"127.0.0.1:{app.port}"


async def test_person_uploads_a_video_in_a_terminal(
    address: str, tmp_path: Path, s3: Minio, bucket: str
) -> None:
    data = mp4_bytes(6 * MiB + 3, seed=21)
    (tmp_path / "holiday.mp4").write_bytes(data)

    code, screen = await asyncio.to_thread(
        in_terminal, ["upload", "holiday.mp4"], address=address, cwd=tmp_path
    )

    assert code == EXIT_OK, screen
    # The progress bar: file name, bytes done of total, a rate (rich's own columns).
    assert "holiday.mp4" in screen
    assert "6.0/6.0 MiB" in screen
    assert "/s" in screen
    assert "uploaded holiday.mp4" in screen
    event_id = next(line.split()[1] for line in screen.splitlines() if line.startswith("event_id"))
    assert await object_sha256(s3, bucket, f"input/{event_id}.mp4") == (
        len(data),
        sha256_hex(data),
    )
    assert "Traceback" not in screen


async def test_markup_in_names_prints_as_it_is_in_a_terminal(address: str, tmp_path: Path) -> None:
    # A name rich would style in the progress bar and the upload line if it read markup.
    (tmp_path / "[bold red]clip.mp4").write_bytes(mp4_bytes(2 * MiB, seed=5))
    code, screen = await asyncio.to_thread(
        in_terminal, ["upload", "[bold red]clip.mp4"], address=address, cwd=tmp_path
    )
    assert code == EXIT_OK, screen
    bar, _ = screen.split("uploaded [bold red]clip.mp4: ")
    assert "[bold red]clip.mp4" in bar  # the progress bar's description
    assert "2.0/2.0 MiB" in bar

    # A name another client gave, in the table of `status` and in one event's fields.
    link = "[link=https://e.example]x[/link]:cat:"  # within the column's 40 characters
    async with AsyncCheckoutClient(address) as client:
        event = await client.upload(io.BytesIO(mp4_bytes(1000)), filename=link)
    for args in (["status"], ["status", event.event_id]):
        code, screen = await asyncio.to_thread(
            in_terminal,
            args,
            address=address,
            cwd=tmp_path,
            columns=200,  # the name unclipped
        )
        assert code == EXIT_OK, screen
        assert link in screen
        assert "\x1b]8;" not in screen  # no OSC 8 hyperlink
        assert "🐱" not in screen


async def test_status_says_when_the_server_did_not_count(
    settings: ServerSettings, ferretdb: FerretDB, tmp_path: Path
) -> None:
    async with started_app(settings, list_count_max_events=1) as app:
        address = f"127.0.0.1:{app.port}"
        async with AsyncCheckoutClient(address) as client:
            for _ in range(2):
                await client.upload(io.BytesIO(mp4_bytes(1000)), filename="clip.mp4")
        analyze(ferretdb, settings.mongo_db, settings.mongo_status_collection)

        code, screen = await asyncio.to_thread(
            in_terminal, ["status"], address=address, cwd=tmp_path
        )

    assert code == EXIT_OK, screen
    assert "2 (too many stored to count)" in screen


async def test_upload_json_is_one_parseable_document(
    address: str, tmp_path: Path, outbox_collection: Collection
) -> None:
    data = mp4_bytes(MiB, seed=2)
    (tmp_path / "a.mp4").write_bytes(data)

    run = await checkout("upload", "a.mp4", "--json", address=address, cwd=tmp_path)

    assert run.code == EXIT_OK, run.stderr
    result = run.json()
    assert result["size_bytes"] == len(data)
    assert result["sha256"] == sha256_hex(data)
    assert result["deduplicated"] is False
    assert result["object_key"] == f"input/{result['video_id']}.mp4"
    assert await outbox_collection.count_documents({"_id": result["event_id"]}) == 1
    assert run.stderr == ""  # no progress bar off a terminal


async def test_download_saves_the_stored_video_and_refusals_leave_no_file(
    address: str, tmp_path: Path
) -> None:
    data = mp4_bytes(3 * MiB + 5, seed=4)
    (tmp_path / "a.mp4").write_bytes(data)
    event_id = (await checkout("upload", "a.mp4", "--json", address=address, cwd=tmp_path)).json()[
        "event_id"
    ]

    run = await checkout("download", event_id, "--json", address=address, cwd=tmp_path)

    assert run.code == EXIT_OK, run.stderr
    saved = tmp_path / f"{event_id}.mp4"
    assert run.json() == {"event_id": event_id, "path": saved.name, "size_bytes": len(data)}
    assert saved.read_bytes() == data
    unknown = "00000000-0000-4000-8000-000000000000"
    refused = await checkout("download", unknown, "-o", "x.mp4", address=address, cwd=tmp_path)
    assert refused.code == EXIT_NOT_FOUND, refused.stderr
    assert "(EVENT_NOT_FOUND)" in refused.stderr
    left = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert left == sorted(["a.mp4", saved.name])  # no x.mp4, no x.mp4.part


async def test_refused_upload_prints_one_line_and_exits_invalid(
    address: str, tmp_path: Path, outbox_collection: Collection
) -> None:
    (tmp_path / "notes.txt").write_bytes(b"just text, not a video\n" * 1000)

    run = await checkout("upload", "notes.txt", address=address, cwd=tmp_path)

    assert run.code == EXIT_INVALID
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("checkout: ошибка: Файл не является видео MP4")
    assert lines[0].endswith("(NOT_MP4)")
    assert await outbox_collection.count_documents({}) == 0


async def test_refused_upload_with_json_reports_a_json_error(address: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"just text")

    run = await checkout("--json", "upload", "notes.txt", address=address, cwd=tmp_path)

    assert run.code == EXIT_INVALID
    error = json.loads(run.stderr)["error"]
    assert (error["code"], error["reason"]) == ("INVALID_ARGUMENT", "NOT_MP4")
    assert has_cyrillic(error["message"])


async def test_missing_file_exits_invalid(address: str, tmp_path: Path) -> None:
    run = await checkout("upload", "nowhere.mp4", address=address, cwd=tmp_path)
    assert run.code == EXIT_INVALID
    assert run.stderr == "checkout: ошибка: Файл не найден: nowhere.mp4 (FILE_NOT_FOUND)\n"


async def test_health(address: str) -> None:
    human = await checkout("health", address=address)
    assert human.code == EXIT_OK, human.stderr
    assert human.stdout.splitlines()[0].split() == ["status", "ok"]

    as_json = await checkout("health", "--json", address=address)
    assert as_json.code == EXIT_OK
    assert as_json.json() == {
        "status": "ok",
        "dependencies": {"storage": "ok", "database": "ok"},
    }


async def test_unreachable_server_exits_unavailable() -> None:
    run = await checkout("health", address=f"127.0.0.1:{free_port()}")
    assert run.code == EXIT_UNAVAILABLE
    assert len(run.stderr.splitlines()) == 1
    assert run.stderr.startswith("checkout: ошибка: ")
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        (["cleanup", "--yes"], {}, "ADMIN_TOKEN_REQUIRED"),
        (["cleanup", "--tls"], {"CHECKOUT_ADMIN_TOKEN": "secret"}, "CONFIRMATION_REQUIRED"),
        (["health"], {"CHECKOUT_TOKEN": "secret"}, "TOKEN_NEEDS_TLS"),
        (["cleanup", "--yes"], {"CHECKOUT_ADMIN_TOKEN": "secret"}, "ADMIN_TOKEN_NEEDS_TLS"),
        (["cleanup", "--yes", "--admin-token", "secret"], {}, "ADMIN_TOKEN_NEEDS_TLS"),
    ],
)
async def test_usage_errors_exit_2_without_calling(
    args: list[str], env: dict[str, str], reason: str
) -> None:
    # No server at this address: a usage error must be reported before any call.
    run = await checkout(*args, address=f"127.0.0.1:{free_port()}", env=env)
    assert run.code == EXIT_USAGE
    assert run.stderr.startswith("checkout: ошибка: ")
    assert run.stderr.endswith(f"({reason})\n")


@pytest.mark.parametrize("args", [[], ["upload"], ["status", "--limit", "-1"], ["frobnicate"]])
async def test_bad_command_lines_exit_2(args: list[str]) -> None:
    run = await checkout(*args, address="127.0.0.1:1")
    assert run.code == EXIT_USAGE
    assert "usage: checkout" in run.stderr
