"""The values the runner's layers share: the event it consumes, what it detects, its states."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class VideoState(enum.StrEnum):
    """The runner's own states of an event (the seed's runner_db), in its state collection;
    never shown by the checkout API."""

    PROCESSING = "processing"  # frames are being extracted and run through the detector
    PREDICTABLE = "predictable"  # detection finished; the result is about to be stored
    READY = "ready"  # the result JSON is stored


class Outcome(enum.StrEnum):
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
class Delivery:
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


@dataclass(frozen=True, kw_only=True)
class VideoInfo:
    """What the container says about the video stream (frame_count 0: unknown)."""

    width: int
    height: int
    fps: float
    frame_count: int
    duration_s: float


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
