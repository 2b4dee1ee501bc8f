"""The runner's download folders: locked while in use, removed at start once their process
is gone (downloads.py), also when other live runners share the folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkout_runner.downloads import LOCK, UNLOCKED_GRACE_S, download_folder, sweep_stale

pytestmark = pytest.mark.timeout(30)

HOLDER = """
import sys, pathlib
from checkout_runner.downloads import download_folder
with download_folder(pathlib.Path(sys.argv[1])) as folder:
    (folder / "video").write_bytes(b"x" * 1024)
    print(folder, flush=True)
    sys.stdin.read()  # until killed
"""


def test_a_folder_is_locked_while_in_use_then_removed(tmp_path: Path) -> None:
    with download_folder(tmp_path) as folder:
        assert (folder / LOCK).exists()
        assert sweep_stale(tmp_path) == 0  # held, here by this process
        assert folder.exists()
    assert not folder.exists()


def _holder(root: Path) -> subprocess.Popen[bytes]:
    """A process holding a download folder under `root` until killed."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def _folder_of(process: subprocess.Popen[bytes]) -> Path:
    assert process.stdout is not None
    return Path(process.stdout.readline().decode().strip())


def test_the_folder_of_a_killed_runner_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    with _holder(tmp_path) as killed, _holder(tmp_path) as live:
        try:
            dead_folder, live_folder = _folder_of(killed), _folder_of(live)
            killed.kill()
            killed.wait(10)

            assert sweep_stale(tmp_path) == 1

            assert not dead_folder.exists()
            assert (live_folder / "video").exists()
        finally:
            live.kill()
            killed.kill()


def test_a_folder_without_its_lock_is_left_while_it_may_be_in_the_making(tmp_path: Path) -> None:
    new, old = tmp_path / "runner-new", tmp_path / "runner-old"
    new.mkdir()
    old.mkdir()
    long_ago = time.time() - UNLOCKED_GRACE_S - 10
    os.utime(old, (long_ago, long_ago))
    (tmp_path / "not-ours").mkdir()

    assert sweep_stale(tmp_path) == 1

    assert new.exists()
    assert not old.exists()
    assert (tmp_path / "not-ours").exists()
