"""In-memory fakes of the detection runner's ports, for its unit tests only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from checkout_runner.domain import (
    Box,
    ConsumedRecord,
    Detection,
    Sample,
    VideoEvent,
    VideoInfo,
    VideoState,
)
from checkout_runner.errors import REFUSALS, RunnerError, VideoMissing, VideoUndecodable
from checkout_runner.ports import Frame


class FakeStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.written: dict[tuple[str, str], datetime] = {}
        self.puts: list[tuple[str, str]] = []
        self.reads: list[tuple[str, str]] = []  # every download and written_at asked
        # Raised by the next calls of download / put_json, one each, first to last.
        self.download_errors: list[Exception] = []
        self.put_errors: list[Exception] = []
        self.download_failed = asyncio.Event()  # set once a download error was raised

    async def download(self, bucket: str, key: str, dest: Path, *, max_bytes: int) -> int:
        self.reads.append((bucket, key))
        if self.download_errors:
            self.download_failed.set()
            raise self.download_errors.pop(0)
        data = self.objects.get((bucket, key))
        if data is None:
            raise VideoMissing(f"{bucket}/{key}")
        await asyncio.to_thread(dest.write_bytes, data)
        return len(data)

    async def written_at(self, bucket: str, key: str) -> datetime | None:
        self.reads.append((bucket, key))
        return self.written.get((bucket, key))

    async def put_json(self, bucket: str, key: str, data: bytes) -> None:
        if self.put_errors:
            raise self.put_errors.pop(0)
        self.objects[(bucket, key)] = data
        self.written[(bucket, key)] = datetime.now(UTC)
        self.puts.append((bucket, key))


class FakeStates:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, object]] = {}
        self.history: list[tuple[str, VideoState]] = []

    async def ensure_indexes(self) -> None:
        pass

    async def state_of(self, event: VideoEvent) -> VideoState | None:
        record = self.records.get(event.event_id)
        if record is None or record["created_at"] != event.created_at:
            return None
        return VideoState(str(record["state"]))

    async def begin(self, event: VideoEvent, *, runner_id: str, trace_id: str) -> int:
        event_id = event.event_id
        record = self.records.get(event_id)
        if record is None or record["created_at"] != event.created_at:  # an earlier event's
            record = self.records[event_id] = {"attempts": 0, "created_at": event.created_at}
        attempts = int(str(record["attempts"])) + 1
        record.update(
            state=VideoState.PROCESSING.value,
            attempts=attempts,
            runner_id=runner_id,
            trace_id=trace_id,
        )
        self.history.append((event_id, VideoState.PROCESSING))
        return attempts

    async def advance(self, event_id: str, state: VideoState, **fields: object) -> None:
        self.records[event_id].update(fields, state=state.value)
        self.history.append((event_id, state))


class FakeDecoder:
    """A "video" is the text `frames=N fps=F`, with optional `scale=K` (the frames are K times
    the 64x48 images handed over), `wide_from=I` (frames from index I on are 96x48 images) and
    `refuse=REASON` (a decoding refusal of that reason, midway) and `stall_at=I` (no answer
    from frame I on, as a decoder stuck in a file); anything else is undecodable."""

    def __init__(self) -> None:
        self.closed = 0  # decodings ended (their context left)
        self.stalled = asyncio.Event()  # set when a decoding stalls

    def _parse(self, path: Path) -> dict[str, str]:
        try:
            fields = dict(part.split("=", 1) for part in path.read_text().split())
            int(fields["frames"]), float(fields["fps"])
        except (ValueError, KeyError, UnicodeDecodeError):
            raise VideoUndecodable("not a fake video") from None
        return fields

    @contextlib.asynccontextmanager
    async def open(self, path: Path, *, every_s: float) -> AsyncIterator[_FakeDecoded]:
        fields = self._parse(path)
        try:
            yield _FakeDecoded(fields, every_s, self.stalled)
        finally:
            self.closed += 1


class _FakeDecoded:
    def __init__(self, fields: dict[str, str], every_s: float, stalled: asyncio.Event) -> None:
        self._fields = fields
        self._every_s = every_s
        self._stalled = stalled
        frames, fps = int(fields["frames"]), float(fields["fps"])
        scale = int(fields.get("scale", "1"))
        self.info = VideoInfo(
            width=64 * scale,
            height=48 * scale,
            fps=fps,
            frame_count=frames,
            duration_s=frames / fps,
        )

    async def samples(self) -> AsyncGenerator[Sample, None]:
        fields = self._fields
        frames, fps = int(fields["frames"]), float(fields["fps"])
        scale = int(fields.get("scale", "1"))
        wide_from = int(fields.get("wide_from", str(frames)))
        step = max(round(self._every_s * fps), 1)
        for index in range(0, frames, step):
            if "refuse" in fields:
                raise REFUSALS[fields["refuse"]](f"refused at frame {index}")
            if index >= int(fields.get("stall_at", str(frames))):
                self._stalled.set()
                await asyncio.Event().wait()  # never set
            width = 96 if index >= wide_from else 64
            yield Sample(
                index=index,
                timestamp_s=index / fps,
                width=width * scale,
                height=48 * scale,
                image=np.full((48, width, 3), index % 256, dtype=np.uint8),
            )
            await asyncio.sleep(0)


def fake_video(frames: int, fps: float = 10.0, **extra: object) -> bytes:
    return " ".join(
        [f"frames={frames}", f"fps={fps}", *(f"{k}={v}" for k, v in extra.items())]
    ).encode()


class FakeDetector:
    """One face in frames whose pixels are odd, none elsewhere; `error` is raised instead;
    `box` replaces the face's box (a non-finite one, say)."""

    name = "fake"
    version = "fake 1"

    def __init__(self) -> None:
        self.calls = 0
        self.batches: list[int] = []  # the number of frames of each call
        self.error: Exception | None = None
        self.box = Box(x1=1, y1=2, x2=11, y2=12)
        self.hook: Callable[[], None] | None = None  # called in each detect

    def detect(self, frames: Sequence[Frame]) -> list[Sequence[Detection]]:
        self.calls += 1
        self.batches.append(len(frames))
        if self.hook is not None:
            self.hook()
        if self.error is not None:
            raise self.error
        return [self._one(frame) for frame in frames]

    def _one(self, frame: Frame) -> Sequence[Detection]:
        if int(frame[0, 0, 0]) % 2:
            return [Detection(label="face", score=0.9, box=self.box)]
        return []


class FakeSource:
    """Batches handed out in order; records what `finish` committed."""

    def __init__(self, batches: list[list[ConsumedRecord]]) -> None:
        self.batches = batches
        self.committed: list[list[ConsumedRecord]] = []
        self.released = 0
        self.errors: list[Exception] = []
        self.drained = asyncio.Event()  # set when asked for more after the last batch
        self.handed_out = asyncio.Event()  # set when a batch was handed out
        self.lag_errors: list[Exception] = []  # raised by the next lag() calls, one each
        self.lag_asked = 0
        self.lag_watch = 0  # lag_seen is set once lag() answered after this many calls
        self.lag_seen = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def next_batch(self, *, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        if self.errors:
            raise self.errors.pop(0)
        if not self.batches:
            self.drained.set()
            await asyncio.sleep(0.01)
            return []
        self.handed_out.set()
        return self.batches.pop(0)[:max_records]

    async def finish(self, deliveries: Sequence[ConsumedRecord], *, commit: bool) -> bool:
        self.released += 1
        if commit:
            self.committed.append(list(deliveries))
        return commit

    async def lag(self) -> int:
        self.lag_asked += 1
        if self.lag_errors:
            raise self.lag_errors.pop(0)
        if self.lag_asked >= self.lag_watch:
            self.lag_seen.set()
        return len(self.batches)

    def assigned(self) -> int:
        return 3


class Outage(RunnerError):
    reason = "STORAGE_UNAVAILABLE"
    retriable = True
