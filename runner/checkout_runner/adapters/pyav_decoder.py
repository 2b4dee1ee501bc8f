"""VideoDecoder over PyAV (FFmpeg inside its wheels): frames decoded one at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from ..domain import VideoInfo
from ..errors import VideoUndecodable
from ..ports import Frame


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except av.error.FFmpegError as exc:
        # FFmpeg's own words, without the local file's name (a temporary path of the runner)
        raise VideoUndecodable(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise VideoUndecodable(f"{type(exc).__name__}: {exc}") from exc


class PyAVDecoder:
    def __init__(self, *, threads: int = 1) -> None:
        """`threads`: FFmpeg decoding threads per video (bounded CPU; 0 lets FFmpeg choose)."""
        self._threads = threads

    def probe(self, path: Path) -> VideoInfo:
        with _translated(), av.open(str(path)) as container:
            stream = _video_stream(container)
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / av.time_base
            return VideoInfo(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                fps=round(float(rate), 3),
                frame_count=stream.frames or 0,
                duration_s=round(duration, 3),
            )

    def sample(
        self, path: Path, *, every_s: float
    ) -> Generator[tuple[int, float, Frame], None, None]:
        with _translated(), av.open(str(path)) as container:
            stream = _video_stream(container)
            stream.codec_context.thread_count = self._threads
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            slack = 0.5 / rate  # half a frame: a timestamp rounded just below a mark counts
            next_at = 0.0
            for index, frame in enumerate(container.decode(stream)):
                if frame.pts is not None and frame.time_base is not None:
                    at = float(frame.pts * frame.time_base)
                else:
                    at = index / rate
                if at + slack < next_at:
                    continue
                image: Frame = frame.to_ndarray(format="rgb24").astype(np.uint8, copy=False)
                yield index, round(at, 3), image
                while next_at <= at + slack:
                    next_at += every_s


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        raise VideoUndecodable("no video stream")
    return container.streams.video[0]
