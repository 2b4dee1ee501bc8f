"""curl as the tests run it against the servers they start: never through a proxy (a proxy
in the environment would otherwise capture requests to 127.0.0.1 and localhost), with no
stdin, and with what came back taken apart: curl's exit code, the HTTP status and version,
the headers and the body.

`run` is for async tests (the in-process server keeps serving meanwhile), `run_sync` for
the synchronous tests of the whole stack; `argv` is the command line, for a test that
streams curl's output itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What `run` appends after the caller's options: the status and HTTP version, on stderr
# (stdout carries the body alone).
_WRITE_OUT = "%{stderr}\n%{http_code} %{http_version}"


def argv(*args: str) -> list[str]:
    """curl's command line: errors shown but no progress, never through a proxy."""
    return ["curl", "-sS", "--noproxy", "*", *args]


def no_proxy_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) for a program that makes its own HTTP
    requests (a docs script's curl as a person types it, schemathesis): no proxy for any
    host."""
    return {**(os.environ if env is None else env), "no_proxy": "*", "NO_PROXY": "*"}


@dataclass(frozen=True)
class Reply:
    """What curl got: its exit code, the HTTP status (0: no answer), the HTTP version, the
    headers as received (every response's, 100 Continue's too, and trailers), the body and
    curl's own error output."""

    exit_code: int
    status: int
    http_version: str
    head: str
    body: bytes
    stderr: str

    @property
    def headers(self) -> dict[str, str]:
        """The last response's headers, by lower-case name."""
        headers: dict[str, str] = {}
        for line in self.head.split("\r\n"):
            name, colon, value = line.partition(":")
            if line.startswith("HTTP/"):
                headers = {}
            elif colon:
                headers[name.strip().lower()] = value.strip()
        return headers

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        """The body as JSON; None for an empty body."""
        return json.loads(self.body) if self.body.strip() else None


@contextmanager
def _command(args: tuple[str, ...], timeout_s: float) -> Iterator[tuple[list[str], Path]]:
    """The command line of one request, and the file curl writes the headers to."""
    with tempfile.TemporaryDirectory(prefix="curl-") as folder:
        head = Path(folder) / "headers"
        # --max-time first: a caller's own --max-time comes later and wins.
        yield argv("--max-time", f"{timeout_s:g}", "-D", str(head), *args, "-w", _WRITE_OUT), head


def _reply(exit_code: int, body: bytes, stderr: bytes, head: Path) -> Reply:
    output = stderr.decode(errors="replace")
    err, _, summary = output.rpartition("\n")
    status, _, version = summary.partition(" ")
    if not status.isdigit():  # curl stopped before its write-out (a bad option, say)
        err, status, version = output, "0", ""
    text = head.read_bytes().decode(errors="replace") if head.exists() else ""
    return Reply(exit_code, int(status), version, text, body, err)


async def run(*args: str, timeout_s: float = 120) -> Reply:
    """curl with `args` (options and URL); curl itself gives up after `timeout_s`."""
    with _command(args, timeout_s) as (command, head):
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        body, stderr = await asyncio.wait_for(process.communicate(), timeout_s + 10)
        return _reply(await process.wait(), body, stderr, head)


def run_sync(*args: str, timeout_s: float = 120) -> Reply:
    """`run` for synchronous tests."""
    with _command(args, timeout_s) as (command, head):
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s + 10,
            check=False,
        )
        return _reply(done.returncode, done.stdout, done.stderr, head)


async def answer(*args: str, timeout_s: float = 120) -> tuple[int, Any]:
    """(HTTP status, JSON body or None) of a request that must get an HTTP answer (curl
    exits 0)."""
    reply = await run(*args, timeout_s=timeout_s)
    assert reply.exit_code == 0, reply.stderr
    return reply.status, reply.json()


def answer_sync(*args: str, timeout_s: float = 120) -> tuple[int, Any]:
    """`answer` for synchronous tests."""
    reply = run_sync(*args, timeout_s=timeout_s)
    assert reply.exit_code == 0, reply.stderr
    return reply.status, reply.json()
