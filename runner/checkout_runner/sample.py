"""The demo clip: two faces from the photos scikit-image ships (`astronaut.png`, the
astronaut Eileen Collins, and `camera.png`, the cameraman) move across a noise background, with
background-only seconds before and after; `Truth` records where each face is in every frame.

Only the photo files are read (with OpenCV), from the installed scikit-image package, which is
installed without its dependencies (scipy and the rest are not needed for two PNG files).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

WIDTH, HEIGHT, FPS = 640, 480, 10


@dataclass(frozen=True)
class Photo:
    name: str
    crop: tuple[int, int, int, int]  # the part pasted: left, top, right, bottom
    face: tuple[int, int, int, int]  # the face in the photo, checked by eye
    start: tuple[int, int]  # where the crop's top-left corner goes, first and last frame
    end: tuple[int, int]


PHOTOS = (
    Photo("astronaut.png", (140, 20, 310, 220), (182, 58, 270, 178), (10, 20), (450, 40)),
    Photo("camera.png", (160, 70, 300, 230), (202, 119, 258, 197), (490, 300), (20, 280)),
)


@dataclass
class Truth:
    """Where the faces are: per frame index, the face boxes (left, top, right, bottom) in
    pixels; frames without faces have an empty list."""

    width: int = WIDTH
    height: int = HEIGHT
    fps: int = FPS
    frames: list[list[tuple[int, int, int, int]]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {"width": self.width, "height": self.height, "fps": self.fps, "frames": self.frames}
        )

    @classmethod
    def from_json(cls, text: str) -> Truth:
        data = json.loads(text)
        frames = [[tuple(box) for box in boxes] for boxes in data["frames"]]
        return cls(data["width"], data["height"], data["fps"], frames)

    def summary(self) -> str:
        with_faces = sum(1 for boxes in self.frames if boxes)
        return (
            f"{len(self.frames)} frames of {self.width}x{self.height} at {self.fps} fps, "
            f"faces in {with_faces}"
        )


def photo(name: str) -> npt.NDArray[np.uint8]:
    """An RGB photo of the installed scikit-image's data folder (found without importing
    scikit-image, whose own loader needs its dependencies)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed (pip install --no-deps scikit-image)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.uint8)


def render(seconds: float = 6.0, *, seed: int = 7) -> tuple[list[npt.NDArray[np.uint8]], Truth]:
    """The clip's frames and their truth: background only for the first and last second,
    the faces moving in between."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(HEIGHT // 4, WIDTH // 4, 3), dtype=np.uint8)
    background = cv2.resize(noise, (WIDTH + 64, HEIGHT + 64), interpolation=cv2.INTER_LINEAR)
    crops = [(p, photo(p.name)[p.crop[1] : p.crop[3], p.crop[0] : p.crop[2]]) for p in PHOTOS]
    total = round(seconds * FPS)
    still = FPS  # one second of background at each end
    frames, truth = [], Truth()
    for index in range(total):
        shift = index % 64
        frame = np.ascontiguousarray(background[shift : shift + HEIGHT, shift : shift + WIDTH])
        boxes: list[tuple[int, int, int, int]] = []
        if still <= index < total - still:
            t = (index - still) / max(total - 2 * still - 1, 1)
            for p, crop in crops:
                x = round(p.start[0] + (p.end[0] - p.start[0]) * t)
                y = round(p.start[1] + (p.end[1] - p.start[1]) * t)
                h, w = crop.shape[:2]
                frame[y : y + h, x : x + w] = crop
                dx, dy = x - p.crop[0], y - p.crop[1]
                boxes.append((p.face[0] + dx, p.face[1] + dy, p.face[2] + dx, p.face[3] + dy))
        frames.append(frame.astype(np.uint8, copy=False))
        truth.frames.append(boxes)
    return frames, truth


def resized(
    frames: list[npt.NDArray[np.uint8]], truth: Truth, width: int, height: int
) -> tuple[list[npt.NDArray[np.uint8]], Truth]:
    """The clip and its truth at another frame size (the same scenes, stretched if the aspect
    ratio differs)."""
    sx, sy = width / truth.width, height / truth.height
    scaled = [
        cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA).astype(np.uint8)
        for f in frames
    ]
    boxes = [
        [(round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy)) for b in fb]
        for fb in truth.frames
    ]
    return scaled, Truth(width, height, truth.fps, boxes)


def write_sample(out: Path, *, seconds: float = 6.0, size: tuple[int, int] | None = None) -> Truth:
    """Write the clip as H.264 in MP4 (PyAV's FFmpeg, libx264) to `out`, at `size` (width,
    height; default 640x480); its truth."""
    frames, truth = render(seconds)
    if size is not None and size != (WIDTH, HEIGHT):
        frames, truth = resized(frames, truth, *size)
    with av.open(str(out), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "20"})
        stream.width, stream.height, stream.pix_fmt = truth.width, truth.height, "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return truth
