"""Base class for one real server run as a subprocess in its own process group."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Self

from ._paths import LOG_DIR

_log = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.1


class ServerError(RuntimeError):
    """A server failed to start (died or never became ready)."""


_FIXED_PORTS = frozenset({27017, 27018, 27019})  # MongoDB's, should a local one run
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, and stays likely free until it is bound.

    Chosen at random below the kernel's ephemeral range: a port the OS picks (bind to 0) is an
    ephemeral one, which any outgoing connection of a busy test run may take before the server
    given it binds it ("Address already in use"). None is handed out twice by this process.
    """
    low, high = 20000, min(_ephemeral_low(), 65536) - 1
    rng = random.SystemRandom()
    for _ in range(200) if high - low > 1000 else ():
        port = rng.randint(low, high)
        if port in _handed_out or port in _FIXED_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room below: the OS picks
        s.bind(("127.0.0.1", 0))
        picked: int = s.getsockname()[1]
        return picked


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def http_status(url: str, timeout_s: float = 1.0) -> int | None:
    """HTTP status of a GET (any status, including 4xx/5xx), or None if unreachable."""
    try:
        # no proxies: the servers are on loopback, whatever http_proxy says
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout_s) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """One server subprocess: start() waits for readiness, stop() is idempotent.

    Subclasses implement ``_command()`` and ``_probe()`` (one readiness check, no
    sleeping) and may override ``_prepare()`` (runs before each spawn) and ``_env()``.
    Output goes to ``log_path`` (default ``.stack/logs/<name>-<port>.log``), appended
    across restarts with a header per start.
    """

    name: str

    def __init__(
        self,
        *,
        name: str,
        port: int,
        log_path: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path if log_path is not None else LOG_DIR / f"{name}-{port}.log"
        self.cwd = cwd
        self.extra_env: dict[str, str] = dict(env or {})
        self.last_start_s: float | None = None  # seconds from spawn to ready, last start
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # --- subclass hooks -------------------------------------------------------
    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """One readiness check; True when the server answers its real protocol."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Runs before each spawn (create dirs, write configs, format storage...)."""

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        return env

    # --- public API -----------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        """The exit code of a process that has exited by itself (and is not reaped yet by
        stop or kill), else None."""
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout_s: float = 60) -> None:
        """Spawn the server and block until it is ready; raise ServerError otherwise."""
        if self.running:
            return
        self._reap()
        if port_open(self.port):
            raise ServerError(f"{self.name}: port {self.port} is already in use by another process")
        self._prepare()
        argv = list(self._command())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log_file.write(f"\n=== devstack {stamp} start: {' '.join(argv)}\n".encode())
        self._log_file.flush()
        _log.info("starting %s: %s (log %s)", self.name, " ".join(argv), self.log_path)
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=self._env(),
            start_new_session=True,
        )
        atexit.register(self._atexit)
        deadline = t0 + timeout_s
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._reap()
                raise ServerError(
                    f"{self.name} exited with code {rc} before becoming ready; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                ready = self._probe()
            except Exception as exc:  # any probe error just means "not ready"
                _log.debug("%s probe error: %r", self.name, exc)
                ready = False
            if ready:
                break
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"{self.name} not ready after {timeout_s:.0f}s; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(_POLL_INTERVAL_S)
        self.last_start_s = time.monotonic() - t0
        _log.info(
            "%s ready on port %d in %.2fs (pid %d)",
            self.name,
            self.port,
            self.last_start_s,
            self._proc.pid,
        )

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM the process group, wait, then SIGKILL. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a paused server must run to handle SIGTERM
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _log.warning(
                    "%s did not exit %.0fs after SIGTERM; sending SIGKILL", self.name, timeout_s
                )
                self._signal(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the process group (crash simulation)."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._reap()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} port={self.port} pid={self.pid}>"

    # --- internals ------------------------------------------------------------
    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        # start_new_session=True: the server leads its own process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def _reap(self) -> None:
        """Wait for a dead (or SIGKILLed) process and release resources."""
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _log.error("%s (pid %d) did not exit", self.name, proc.pid)
            # kill stragglers left in the group (e.g. children of a wrapper)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self._proc = None
            atexit.unregister(self._atexit)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _atexit(self) -> None:
        if self.running:
            self.stop(timeout_s=5)
