"""Detector: OpenCV's built-in HOG + linear SVM pedestrian detector (people, upright, at least
64x128 pixels). It ships inside opencv-python-headless 4.x (5.0 dropped it)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..domain import Box, Detection
from ..ports import Frame


class HogPeopleDetector:
    name = "hog-people"

    def __init__(self, *, threshold: float = 0.5, max_detections: int = 100) -> None:
        """`threshold`: the least SVM margin a window must have (OpenCV's hitThreshold is 0);
        `max_detections`: the most a frame reports, highest margins first."""
        self.version = f"HOG people detector (OpenCV {cv2.__version__})"
        self._threshold = threshold
        self._max_detections = max_detections
        self._hog = cv2.HOGDescriptor()
        weights = np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32)
        self._hog.setSVMDetector(weights)

    def detect(self, frames: Sequence[Frame]) -> list[Sequence[Detection]]:
        return [self._detect(frame) for frame in frames]

    def _detect(self, frame: Frame) -> Sequence[Detection]:
        height, width = frame.shape[:2]
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        rects, weights = self._hog.detectMultiScale(
            gray, winStride=(8, 8), padding=(8, 8), scale=1.05
        )
        found = []
        for rect, weight in zip(rects, np.ravel(weights), strict=True):
            if float(weight) < self._threshold:
                continue
            x, y, w, h = (float(v) for v in rect)
            found.append(
                Detection(
                    label="person",
                    score=round(float(weight), 4),
                    box=Box(
                        x1=round(max(x, 0.0), 1),
                        y1=round(max(y, 0.0), 1),
                        x2=round(min(x + w, width), 1),
                        y2=round(min(y + h, height), 1),
                    ),
                )
            )
        return sorted(found, key=lambda d: -d.score)[: self._max_detections]
