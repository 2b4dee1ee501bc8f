"""Videos made to cost a detection runner as much as they can (tests and bench/): each is small
on disk and known to the runner's limits by what it does, not by its name. `HOSTILE` maps a
name to its maker and the failure reason the runner must give it."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from checkout_runner.sample import write_sample


def _encode(
    out: Path,
    *,
    width: int,
    height: int,
    rate: Fraction,
    frames: Iterable[tuple[int, np.ndarray]],
) -> None:
    """H.264 (libx264, ultrafast) of `frames` ((pts in 1/rate, RGB image)) into `out`."""
    with av.open(str(out), mode="w", format="mp4") as muxer:
        stream = muxer.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        for pts, image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = pts
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)


def huge_frames(out: Path, *, side: int = 8192, count: int = 3) -> None:
    """Black frames of `side` x `side` (8192: 67 megapixels each, about 100 MB decoded)."""
    black = np.zeros((side, side, 3), dtype=np.uint8)
    _encode(
        out, width=side, height=side, rate=Fraction(25), frames=((i, black) for i in range(count))
    )


def tiny_frames_fast(out: Path, *, rate: int = 1000, seconds: int = 3) -> None:
    """16x16 frames at `rate` frames a second: thousands of frames a second of video."""
    tiny = np.zeros((16, 16, 3), dtype=np.uint8)
    frames = ((i, tiny) for i in range(rate * seconds))
    _encode(out, width=16, height=16, rate=Fraction(rate), frames=frames)


def tiny_frames_long(out: Path, *, hours: int = 5) -> None:
    """16x16 frames, one a minute, for `hours`: a long video in a few kilobytes."""
    tiny = np.zeros((16, 16, 3), dtype=np.uint8)
    frames = ((i, tiny) for i in range(hours * 60))
    _encode(out, width=16, height=16, rate=Fraction(1, 60), frames=frames)


def constant_timestamps(out: Path, *, count: int = 2000) -> None:
    """An MP4 whose frames all carry timestamp 0: its `stts` box (each sample's duration)
    rewritten to durations of 0 (a muxer refuses to write that; a file can still say it)."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(4)]
    frames = ((i, images[i % 4]) for i in range(count))
    _encode(out, width=32, height=32, rate=Fraction(25), frames=frames)
    data = bytearray(out.read_bytes())
    at = data.index(b"stts")
    (entries,) = struct.unpack_from(">I", data, at + 8)
    for k in range(entries):  # (sample count, sample duration) pairs
        struct.pack_into(">I", data, at + 16 + 8 * k, 0)
    out.write_bytes(bytes(data))


def truncated(out: Path) -> None:
    """The demo clip cut after its first third, in the middle of a frame: FFmpeg fails on it
    a second into the clip."""
    whole = out.with_name(out.name + ".whole.mp4")
    write_sample(whole, seconds=6.0)
    data = whole.read_bytes()
    whole.unlink()
    out.write_bytes(data[: len(data) // 3])


def not_a_video(out: Path) -> None:
    """An MP4 `ftyp` box (what the server checks), then noise."""
    out.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)


# name -> (maker, the failure reason the runner gives it)
HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "huge-frames": (huge_frames, "VIDEO_FRAME_TOO_LARGE"),
    "tiny-frames-fast": (tiny_frames_fast, "VIDEO_FRAME_RATE_TOO_HIGH"),
    "tiny-frames-long": (tiny_frames_long, "VIDEO_TOO_LONG"),
    "constant-timestamps": (constant_timestamps, "VIDEO_TOO_MANY_FRAMES"),
    "truncated": (truncated, "VIDEO_UNDECODABLE"),
    "not-a-video": (not_a_video, "VIDEO_UNDECODABLE"),
}
