"""The result JSON the runner writes at the result key (docs/status.md, "Contract for
the detection runner"): one object, `status` "ok" with the detections, or "failed" with
`error`, which the checkout API reports as the event's `failed` status and error."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from .domain import Analysis, Detection, FrameResult, ResultStatus, VideoEvent
from .errors import RunnerError

RESULT_VERSION = 1
# What a success result takes besides its frames (ids, times, the video's figures, the
# detector's name and version, the frames' brackets), with room to spare: the frames get the
# rest of RESULT_MAX_BYTES.
HEADER_MAX_BYTES = 2048


def _header(event: VideoEvent, outcome: ResultStatus) -> dict[str, Any]:
    return {
        "version": RESULT_VERSION,
        "status": outcome.value,
        "event_id": event.event_id,
        "video_id": event.video_id,
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def _detection(d: Detection) -> dict[str, Any]:
    found: dict[str, Any] = {"label": d.label, "score": d.score, "box": asdict(d.box)}
    if d.landmarks:
        found["landmarks"] = [list(p) for p in d.landmarks]
    return found


def success(
    event: VideoEvent,
    analysis: Analysis,
    *,
    detector: tuple[str, str],
    sample_fps: float,
    truncated: bool,
) -> bytes:
    body = {
        **_header(event, ResultStatus.OK),
        "video": asdict(analysis.video),
        "detector": {"name": detector[0], "version": detector[1]},
        "sample_fps": sample_fps,
        "truncated": truncated,
        "frames": [frame(f) for f in analysis.frames],
    }
    return _encode(body)


def frame(f: FrameResult) -> dict[str, Any]:
    return {
        "index": f.index,
        "timestamp_s": f.timestamp_s,
        "detections": [_detection(d) for d in f.detections],
    }


def frame_bytes(f: FrameResult) -> int:
    """What the frame adds to the result document, its separator included."""
    return len(_encode(frame(f))) + 1


def failure(event: VideoEvent, error: RunnerError) -> bytes:
    """The failure result of `error`: its reason, its technical message and, for people, its
    description in Russian."""
    described = {"description": error.description} if error.description else {}
    body = {
        **_header(event, ResultStatus.FAILED),
        "error": {"reason": error.reason, "message": error.message, **described},
    }
    return _encode(body)


def _encode(body: dict[str, Any]) -> bytes:
    # allow_nan=False: a NaN or an infinity raises here rather than becoming JSON no parser
    # takes (the processor refuses non-finite detections before they get here).
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
