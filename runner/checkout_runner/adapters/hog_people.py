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

    def __init__(self, *, threshold: float = 0.5) -> None:
        """`threshold`: the least SVM margin a window must have (OpenCV's hitThreshold is 0)."""
        self.version = f"HOG people detector (OpenCV {cv2.__version__})"
        self._threshold = threshold
        self._hog = cv2.HOGDescriptor()
        weights = np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32)
        self._hog.setSVMDetector(weights)

    def detect(self, frame: Frame) -> Sequence[Detection]:
        height, width = frame.shape[:2]
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        rects, weights = self._hog.detectMultiScale(
            gray, winStride=(8, 8), padding=(8, 8), scale=1.05
        )
        found = []
        for (x, y, w, h), weight in zip(rects, np.ravel(weights), strict=True):
            if float(weight) < self._threshold:
                continue
            found.append(
                Detection(
                    label="person",
                    score=round(float(weight), 4),
                    box=Box(
                        x1=float(max(x, 0)),
                        y1=float(max(y, 0)),
                        x2=float(min(x + w, width)),
                        y2=float(min(y + h, height)),
                    ),
                )
            )
        return sorted(found, key=lambda d: -d.score)
