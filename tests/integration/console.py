"""The SDK's `checkout` console script run as a real process by a test: with pipes, as a
script runs it, or on a pseudo-terminal, as a person at a shell does. Either way it sees
none of the caller's CHECKOUT_* variables, only those the test gives."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

CHECKOUT = str(Path(sys.executable).with_name("checkout"))  # installed beside this Python


class Run(NamedTuple):
    """A finished run: its exit code and what it wrote."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli_env(address: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without its CHECKOUT_* variables, then CHECKOUT_ADDR (when
    `address` is given) and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_")}
    return {**env, **({"CHECKOUT_ADDR": address} if address else {}), **extra}


async def checkout(
    *args: str,
    address: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 60,
) -> Run:
    """`checkout *args` with pipes and no stdin, as a script runs it."""
    process = await asyncio.create_subprocess_exec(
        CHECKOUT,
        *args,
        cwd=cwd,
        env=cli_env(address, **(env or {})),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    code = await process.wait()  # the exit status (communicate() has reaped the process)
    return Run(code, stdout.decode(), stderr.decode())


def in_terminal(
    args: list[str], *, address: str, cwd: Path, columns: int = 120, timeout_s: float = 120
) -> tuple[int, str]:
    """`checkout *args` on a pseudo-terminal `columns` wide, as a person at a shell runs it:
    its exit code and everything the terminal showed. Blocking: async tests run it in a
    thread."""
    leader, follower = pty.openpty()
    env = cli_env(address, COLUMNS=str(columns), LINES="40", TERM="xterm-256color")
    process = subprocess.Popen(
        [CHECKOUT, *args], cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    screen = b""
    try:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            screen += data
    finally:
        os.close(leader)
        code = process.wait(timeout=timeout_s)
    return code, screen.decode(errors="replace")
