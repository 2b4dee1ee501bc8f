"""The hashed locks (requirements/*.txt) agree with the pyproject.toml files: a requirement
added, dropped or re-pinned without `make lock` fails here (and `make lint`). Offline: it
reads the files only."""

from __future__ import annotations

import pytest

from tools.lock import LOCKS, OURS, layers, problems, read_lock

pytestmark = pytest.mark.timeout(10)


def test_the_locks_satisfy_every_requirement() -> None:
    found = problems()
    assert not found, "\n".join(found)


def test_none_of_our_distributions_is_locked() -> None:
    # They are on no index: installed from ./common, ./client, . and ./runner with --no-index.
    for layer in layers():
        assert not OURS & set(read_lock(layer.output)), layer.output


def test_every_pin_has_a_hash_and_an_exact_version() -> None:
    for layer in layers():
        for pin in read_lock(layer.output).values():
            assert pin.version, (layer.output, pin.name)
            assert pin.hashes, (layer.output, pin.name)
    assert (LOCKS / "pip.txt").exists()
