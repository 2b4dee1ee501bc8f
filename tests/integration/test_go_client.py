"""The Go client (clients/go) against the real server: its interop program, built with
`go build` as devstack builds composecheck, runs a streaming upload, a watch, a rich error
and a resumable upload cut and resumed, and prints one line per check; the test reads the
lines and checks what they claim in storage. Then the module's own unit tests."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from miniopy_async.api import Minio

from checkout_server import errors
from checkout_server.config import MiB, ServerSettings
from checkout_server.wiring.server import App
from tests.integration.apps import started_app
from tests.integration.storage_checks import object_sha256
from tools import go_client

# The first test builds the program first: with a cold Go build cache that compiles grpc-go.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SHA256 = r"[0-9a-f]{64}"


class Run(NamedTuple):
    """A finished run of the interop program."""

    code: int
    lines: list[str]
    stderr: str


def go(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`go COMMAND ARGS` in the module, as `make lint` runs it (-mod=readonly: go.sum pins
    every module; devstack's environment, CGO_ENABLED=0), with -buildvcs=false (the work
    tree's state must not change the binary)."""
    return go_client.go(command, "-buildvcs=false", *args, timeout_s=240)


@pytest.fixture(scope="module")
def interop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/go/cmd/interop, built into a folder of the module's own."""
    binary = tmp_path_factory.mktemp("go-client") / "interop"
    built = go("build", "-o", str(binary), "./cmd/interop")
    assert built.returncode == 0, built.stderr
    return binary


async def run_interop(binary: Path, app: App, *args: str) -> Run:
    """The program against `app`, without blocking the event loop the server runs on."""
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "-addr",
        f"127.0.0.1:{app.port}",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 150)
    return Run(await process.wait(), stdout.decode().splitlines(), stderr.decode())


def line(run: Run, check: str) -> str:
    """The one line the run printed for `check`."""
    found = [text for text in run.lines if text.split(":")[0].split()[-1:] == [check]]
    assert len(found) == 1, run.lines
    return found[0]


async def test_go_client_against_the_server(
    interop: Path, app: App, s3: Minio, bucket: str
) -> None:
    run = await run_interop(interop, app)

    assert run.code == 0, (run.lines, run.stderr)
    assert len(run.lines) == 5, run.lines
    assert run.lines[-1] == "interop: 4 passed, 0 failed"

    # The streaming upload: what the server answered is what storage holds.
    upload = re.fullmatch(
        rf"ok   upload: event ({UUID}), (\d+) bytes in 524288-byte chunks, sha256 ({SHA256})",
        line(run, "upload"),
    )
    assert upload, run.lines
    event_id, size, digest = upload[1], int(upload[2]), upload[3]
    assert size == 2 * MiB + 3  # five chunks, the last one of 3 bytes
    assert await object_sha256(s3, bucket, f"input/{event_id}.mp4") == (size, digest)

    # The server sends the current status first; no relay runs here, so it stays `new`.
    assert line(run, "watch") == f"ok   watch: event {event_id}: [new]"

    # The rich error: gRPC code, ErrorInfo reason and the Russian message, as errors.py says.
    assert line(run, "error-details") == (
        f'ok   error-details: InvalidArgument {errors.InvalidEventId.reason} "'
        f'{errors.InvalidEventId.message}: not-a-uuid"'
    )

    # The cut keeps the first part (5 MiB, the test server's UPLOAD_PART_BYTES) and loses the
    # half part being collected; the resume sends the rest and storage holds the whole file.
    part = app.settings.upload_part_bytes
    resumable = re.fullmatch(
        rf"ok   resumable: cut at (\d+) of (\d+) bytes, persisted (\d+) \(parts of (\d+)\), "
        rf"resumed: event ({UUID}), sha256 ({SHA256})",
        line(run, "resumable"),
    )
    assert resumable, run.lines
    cut, total, persisted, parts = (int(resumable[i]) for i in range(1, 5))
    assert (parts, persisted, cut, total) == (part, part, part + part // 2, 12 * MiB + 5)
    stored = await object_sha256(s3, bucket, f"input/{resumable[5]}.mp4")
    assert stored == (total, resumable[6])


async def test_a_failing_check_fails_the_program(interop: Path, settings: ServerSettings) -> None:
    # A server that takes at most 8 MiB refuses the 12 MiB resumable upload at its start.
    async with started_app(settings, upload_max_bytes=8 * MiB) as app:
        run = await run_interop(interop, app)

    assert run.code == 1, (run.lines, run.stderr)
    assert line(run, "upload").startswith("ok   upload: event ")
    assert line(run, "resumable").startswith(
        f"FAIL resumable: InvalidArgument {errors.FileTooLarge.reason}: "
        f"{errors.FileTooLarge.message}"
    )
    assert run.lines[-1] == "interop: 3 passed, 1 failed"


def test_go_unit_tests() -> None:
    tested = go("test", "-count=1", "./...")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "ok  \tcheckout/clients/go/checkout\t" in tested.stdout, tested.stdout
