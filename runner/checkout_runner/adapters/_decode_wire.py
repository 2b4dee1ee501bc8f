"""The pipe between the runner and its decoding process: messages of a kind byte, a length and
a payload, on the process's standard output. The decoding process is this package's own code
(decode_worker.py), so both ends are written here, once."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from typing import Any

from ..domain import VideoInfo

HEADER = struct.Struct(">cI")  # kind, payload length
SAMPLE = struct.Struct(">QdIIII")  # index, timestamp_s, width, height, image width and height

INFO = b"I"  # JSON: the VideoInfo, once the container passed the limits
FRAME = b"S"  # SAMPLE, then the RGB image's bytes
ERROR = b"E"  # JSON: {"reason", "message"}, the last message
DONE = b"D"  # empty, the last message


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def info(video: VideoInfo) -> bytes:
    return message(INFO, json.dumps(asdict(video)).encode())


def error(reason: str, text: str) -> bytes:
    return message(ERROR, json.dumps({"reason": reason, "message": text}).encode())


def frame_header(
    index: int, timestamp_s: float, width: int, height: int, image_w: int, image_h: int
) -> bytes:
    """The header of a FRAME message whose image (image_h x image_w x 3 bytes) follows."""
    return HEADER.pack(FRAME, SAMPLE.size + image_w * image_h * 3) + SAMPLE.pack(
        index, timestamp_s, width, height, image_w, image_h
    )


def parse_json(payload: bytes) -> dict[str, Any]:
    value = json.loads(payload)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
