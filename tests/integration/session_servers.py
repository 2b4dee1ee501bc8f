"""The session's shared servers (FerretDB, MinIO, Kafka, the whole stack), started once the
tests are collected and before the first one runs, in parallel, and only those a collected
test uses. Started inside a fixture, a server's start-up (a minute and more for Kafka or the
whole stack on a loaded machine) counted against the first test's pytest-timeout; started
here it counts against none. Each start is bounded by devstack's own readiness waits.

conftest.py calls `start` from pytest_collection_finish and `stop` from pytest_sessionfinish;
its session fixtures `get` the running servers (and start one here that no collected test
named, should a test ask for it anyway).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class SessionServers:
    """Named factories of started servers (each returns a server with a `stop()`, or raises);
    each runs at most once a session."""

    def __init__(self, factories: dict[str, Callable[[], Any]]) -> None:
        self._factories = factories
        self._started: dict[str, Any] = {}
        self._errors: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._factories)

    def start(self, names: Iterable[str]) -> None:
        """Start these servers at once (each in a thread); a failure is kept for `get`."""
        wanted = [n for n in self._factories if n in set(names)]
        if not wanted:
            return
        with ThreadPoolExecutor(len(wanted)) as pool:
            for future in [pool.submit(self._start_one, name) for name in wanted]:
                future.result()

    def _start_one(self, name: str) -> None:
        with self._lock:
            if name in self._started or name in self._errors:
                return
        try:
            server = self._factories[name]()
        except BaseException as exc:  # kept, and raised in every test that needs it
            with self._lock:
                self._errors[name] = exc
            return
        with self._lock:
            self._started[name] = server

    def get(self, name: str) -> Any:
        """The running server `name`, started now if it was not yet; its start-up error, if
        it failed."""
        self._start_one(name)
        if name in self._errors:
            raise RuntimeError(f"the session's {name} did not start") from self._errors[name]
        return self._started[name]

    def stop(self) -> None:
        """Stop every server started, the last started first."""
        with self._lock:
            started, self._started = list(self._started.values()), {}
        for server in reversed(started):
            server.stop()
