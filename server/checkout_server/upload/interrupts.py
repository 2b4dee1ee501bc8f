"""The upload streams of a process, plain and resumable, that a stop interrupts shortly before
its grace period ends, so that each is answered by its own handler (UNAVAILABLE
SHUTTING_DOWN, retriable, in Russian) rather than cancelled with gRPC's bare status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from .. import errors


class StreamInterrupts:
    """The streams running now; `interrupt` cancels them and refuses new ones."""

    def __init__(self) -> None:
        self._streams: set[asyncio.Task[object]] = set()
        self._interrupted = False

    @contextlib.contextmanager
    def stream(self) -> Iterator[asyncio.Task[object]]:
        """The current task, a stream for the block; ShuttingDown once interrupted."""
        task = asyncio.current_task()
        assert task is not None, "a stream runs in a task"
        self._streams.add(task)
        try:
            if self._interrupted:
                raise errors.ShuttingDown()
            yield task
        finally:
            self._streams.discard(task)

    def caused(self, task: asyncio.Task[object]) -> bool:
        """Whether the CancelledError `task` got is the interrupt's alone (not also its
        client's, its deadline's or gRPC's): then the stream answers SHUTTING_DOWN."""
        return self._interrupted and task.uncancel() == 0

    def interrupt(self) -> int:
        """Cancel every stream and refuse new ones; how many were streaming."""
        self._interrupted = True
        for task in self._streams:
            task.cancel()
        return len(self._streams)
