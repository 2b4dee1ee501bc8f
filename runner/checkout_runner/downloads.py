"""The folders videos are downloaded to (`runner-*` under RUNNER_TEMP_DIR), one per video in
hand, each holding an exclusive lock (flock) while it is in use. A runner killed mid-video
(SIGKILL, the OOM killer) leaves its folder behind, and a volume shared by replicas keeps it
across restarts; the kernel releases the dead process's lock, so at start a runner removes
every folder whose lock it can take. Folders of live runners, in this container or another
on the same volume, keep theirs."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "runner-"
LOCK = ".lock"
# A folder without its lock file yet is one being made right now, unless it is older.
UNLOCKED_GRACE_S = 60.0


@contextlib.contextmanager
def download_folder(root: Path | None) -> Iterator[Path]:
    """A new folder under `root` (default: the system's temporary folder), locked until the
    context ends, then removed with what it holds."""
    with tempfile.TemporaryDirectory(dir=root, prefix=PREFIX) as name:
        folder = Path(name)
        with (folder / LOCK).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield folder


def sweep_stale(root: Path | None) -> int:
    """Remove the download folders under `root` that no live process holds; how many."""
    removed = 0
    for folder in (root or Path(tempfile.gettempdir())).glob(f"{PREFIX}*"):
        try:
            if _abandoned(folder):
                shutil.rmtree(folder)
                removed += 1
        except OSError as exc:  # gone meanwhile, or not ours to remove
            log.warning("stale download not removed: %s", exc, extra={"path": folder.name})
    if removed:
        log.info("stale downloads removed", extra={"count": removed})
    return removed


def _abandoned(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    try:
        lock = (folder / LOCK).open("r")
    except FileNotFoundError:
        return folder.stat().st_mtime < time.time() - UNLOCKED_GRACE_S
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live process holds it
        return True
