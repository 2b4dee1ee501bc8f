"""Decoding with PyAV (FFmpeg inside its wheels). It runs inside the decoding process
(decode_worker.py), never in the runner's own: the limits are checked on what the container
says before the first frame, and again on every decoded frame, and each sampled frame is
scaled to the detection size by libswscale as it is converted to RGB, so no full-size RGB
copy of a frame ever exists."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from ..domain import DecodeLimits, Sample, VideoInfo
from ..errors import (
    DecodeMemoryExceeded,
    FrameRateTooHigh,
    FrameTooLarge,
    TooManyFrames,
    VideoTooLong,
    VideoUndecodable,
)
from ._sizing import detection_size


@contextlib.contextmanager
def _translated(where: Callable[[], str] = lambda: "") -> Iterator[None]:
    """FFmpeg's errors as the runner's; `where` says how far decoding got."""
    try:
        yield
    except av.error.MemoryError as exc:
        raise DecodeMemoryExceeded(f"FFmpeg ran out of memory: {exc.strerror or exc}") from exc
    except av.error.FFmpegError as exc:
        # FFmpeg's own words, without the local file's name (a temporary path of the runner)
        text = f"{where()}{type(exc).__name__}: {exc.strerror or exc}"
        raise VideoUndecodable(text) from exc
    except UnicodeDecodeError as exc:
        raise VideoUndecodable(f"{where()}{type(exc).__name__}: {exc}") from exc


class PyAVDecoder:
    def __init__(self, limits: DecodeLimits, *, threads: int = 1) -> None:
        """`threads`: FFmpeg decoding threads (bounded CPU; 0 lets FFmpeg choose)."""
        self._limits = limits
        self._threads = threads

    @contextlib.contextmanager
    def open(self, path: Path) -> Iterator[_Opened]:
        """The video at `path`, its container's figures checked against the limits."""
        with _translated(), av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoUndecodable("no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = self._threads
            opened = _Opened(container, stream, self._limits)
            opened.check()
            yield opened


class _Opened:
    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        limits: DecodeLimits,
    ) -> None:
        self._container = container
        self._stream = stream
        self._limits = limits
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        self.info = VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=round(float(rate), 3),
            frame_count=stream.frames or 0,
            duration_s=round(duration, 3),
        )

    def check(self) -> None:
        info, limits = self.info, self._limits
        _check_pixels(info.width, info.height, limits)
        if info.duration_s > limits.max_duration_s:
            raise VideoTooLong(
                f"{info.duration_s:g} s long, over the limit of {limits.max_duration_s:g} s"
            )
        if info.fps > limits.max_fps:
            raise FrameRateTooHigh(
                f"{info.fps:g} frames/s, over the limit of {limits.max_fps:g} frames/s"
            )

    def samples(self, *, every_s: float) -> Iterator[Sample]:
        """The first frame at or after each multiple of `every_s`, decoded one at a time."""
        limits = self._limits
        rate = self.info.fps or 25.0
        slack = 0.5 / rate  # half a frame: a timestamp rounded just below a mark counts
        next_at, first_at, last_at = 0.0, None, 0.0
        unsampled = 0  # frames decoded since the last sample
        with _translated(lambda: f"at {last_at:.1f} s of {self.info.duration_s:g} s: "):
            for index, frame in enumerate(self._container.decode(self._stream)):
                _check_pixels(frame.width, frame.height, limits)
                if frame.pts is not None and frame.time_base is not None:
                    at = float(frame.pts * frame.time_base)
                else:
                    at = index / rate
                first_at = at if first_at is None else first_at
                last_at = max(last_at, at)
                if at - first_at > limits.max_duration_s:
                    raise VideoTooLong(
                        f"frames past {limits.max_duration_s:g} s, the limit "
                        "(the container did not say how long it is)"
                    )
                if at + slack < next_at:
                    unsampled += 1
                    if unsampled > limits.max_frames_per_sample:
                        raise TooManyFrames(
                            f"{unsampled} frames decoded between two samples, over the limit "
                            f"of {limits.max_frames_per_sample} (timestamps not advancing, or "
                            "a frame rate the container does not state)"
                        )
                    continue
                unsampled = 0
                size = detection_size(frame.width, frame.height, limits.detect_max_side_px)
                width, height = size or (frame.width, frame.height)
                rgb = frame.reformat(
                    width=width, height=height, format="rgb24", interpolation="AREA"
                )
                yield Sample(
                    index=index,
                    timestamp_s=round(at, 3),
                    width=frame.width,
                    height=frame.height,
                    image=rgb.to_ndarray().astype(np.uint8, copy=False),
                )
                while next_at <= at + slack:
                    next_at += every_s


def _check_pixels(width: int, height: int, limits: DecodeLimits) -> None:
    if width * height > limits.max_frame_pixels:
        raise FrameTooLarge(
            f"frames of {width}x{height} pixels, over the limit of "
            f"{limits.max_frame_pixels} pixels a frame"
        )
