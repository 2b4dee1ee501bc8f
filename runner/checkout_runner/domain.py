"""The values the runner's layers share: the event it consumes, what it detects, its states."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt


class VideoState(enum.StrEnum):
    """The runner's own states of an event (the seed's runner_db), in its state collection;
    never shown by the checkout API."""

    PROCESSING = "processing"  # frames are being extracted and run through the detector
    PREDICTABLE = "predictable"  # detection finished; the result is about to be stored
    READY = "ready"  # the result JSON is stored


class ResultStatus(enum.StrEnum):
    """What the stored result says (its `status` field)."""

    OK = "ok"
    FAILED = "failed"  # the video cannot be processed for good; `error` says why


@dataclass(frozen=True, kw_only=True)
class VideoEvent:
    """One Kafka record of the relay's topic (envelope version 1, docs/relay.md)."""

    event_id: str
    video_id: str
    bucket: str
    object_key: str
    size_bytes: int
    created_at: datetime
    # The W3C trace context of the relay's publish span ("" if none): processing continues it.
    traceparent: str = ""


@dataclass(frozen=True, kw_only=True)
class ConsumedRecord:
    """A record as the consumer got it: where it came from, so its offset can be committed."""

    topic: str
    partition: int
    offset: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return ""


@dataclass(frozen=True, kw_only=True)
class Box:
    """A box in pixels of the full frame: left, top, right, bottom."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True, kw_only=True)
class Detection:
    label: str  # "face", "person"
    score: float  # the detector's confidence, 0..1 for CenterFace, an SVM margin for HOG
    box: Box
    # Points in pixels, where the detector finds them (CenterFace: eyes, nose, mouth corners).
    landmarks: tuple[tuple[float, float], ...] = ()

    def is_finite(self) -> bool:
        b = self.box
        numbers = [self.score, b.x1, b.y1, b.x2, b.y2, *(v for p in self.landmarks for v in p)]
        return all(math.isfinite(v) for v in numbers)

    def scaled(self, sx: float, sy: float, width: int, height: int) -> Detection:
        """In pixels of a frame `sx` x `sy` times larger (width x height), box clipped to it."""
        b = self.box
        return Detection(
            label=self.label,
            score=round(self.score, 4),
            box=Box(
                x1=round(min(max(b.x1 * sx, 0.0), width), 1),
                y1=round(min(max(b.y1 * sy, 0.0), height), 1),
                x2=round(min(max(b.x2 * sx, 0.0), width), 1),
                y2=round(min(max(b.y2 * sy, 0.0), height), 1),
            ),
            landmarks=tuple((round(x * sx, 1), round(y * sy, 1)) for x, y in self.landmarks),
        )


@dataclass(frozen=True, kw_only=True)
class VideoInfo:
    """What the container says about the video stream (frame_count 0: unknown)."""

    width: int
    height: int
    fps: float
    frame_count: int
    duration_s: float


@dataclass(frozen=True, kw_only=True)
class DecodeLimits:
    """What one video may cost before it is refused (config.py: RUNNER_MAX_* and
    RUNNER_DECODE_*; errors.py names the reason of each)."""

    max_frame_pixels: int  # width x height of a frame
    max_duration_s: float
    max_fps: float
    max_frames_per_sample: int  # frames decoded between two sampled ones
    memory_bytes: int  # the decoding process's address space
    cpu_s: int  # the decoding process's CPU time
    timeout_s: float  # wall clock from opening the video to its last sample taken
    detect_max_side_px: int  # frames are scaled to this longer side while decoded (0: never)


@dataclass(frozen=True, kw_only=True)
class Sample:
    """A sampled frame as the decoder hands it over: `image` at the detection size, `width`
    and `height` the decoded frame's own (what boxes are reported in)."""

    index: int  # of the frame in the stream, from 0
    timestamp_s: float
    width: int
    height: int
    image: npt.NDArray[np.uint8]  # height x width x 3, RGB


@dataclass(frozen=True, kw_only=True)
class FrameResult:
    index: int  # of the frame in the stream, from 0
    timestamp_s: float
    detections: tuple[Detection, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """The detector's findings for a whole video."""

    video: VideoInfo
    frames: list[FrameResult] = field(default_factory=list)
    decoded_frames: int = 0  # every decoded frame, sampled or not
