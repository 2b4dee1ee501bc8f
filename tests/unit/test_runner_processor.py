"""The runner's processor against in-memory fakes: results, states, idempotent skips,
failure results, retries of outages and of bugs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from checkout_runner import envelope
from checkout_runner.domain import Box, ConsumedRecord, VideoState
from checkout_runner.errors import REFUSALS, VideoTooLarge
from checkout_runner.metrics import RunnerMetrics
from checkout_runner.processor import Handled, Processor, ProcessorConfig
from checkout_runner.result import HEADER_MAX_BYTES
from tests.runner_fakes import (
    FakeDecoder,
    FakeDetector,
    FakeStates,
    FakeStore,
    Outage,
    fake_video,
)

pytestmark = pytest.mark.timeout(10)

EVENT = "6f1c7e2a-1111-4c4c-8d8d-222233334444"
VIDEO = "0b6e3f5e-8d4f-4e1a-9a51-8c3c0d9f2b10"
CREATED = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
INPUT = ("videos", f"input/{VIDEO}.mp4")
OUTPUT = ("videos", f"output/{VIDEO}.json")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def record(**changes: Any) -> ConsumedRecord:
    value = {
        "version": 1,
        "event_id": EVENT,
        "type": "checkout.video.uploaded",
        "video_id": VIDEO,
        "bucket": "videos",
        "object_key": f"input/{VIDEO}.mp4",
        "size_bytes": 100,
        "sha256": "",
        "created_at": CREATED.isoformat(),
        **changes,
    }
    return ConsumedRecord(
        topic="t",
        partition=0,
        offset=7,
        value=json.dumps(value).encode(),
        headers=(("event_id", EVENT.encode()), ("traceparent", TRACEPARENT.encode())),
    )


async def begun(s: Setup, created_at: datetime = CREATED) -> int:
    """The event's record `processing`, as a runner that began it left it."""
    event = envelope.parse(record(created_at=created_at.isoformat()), buckets={"videos"})
    return await s.states.begin(event, runner_id="a", trace_id="")


class Spans:
    def __init__(self) -> None:
        self.parents: list[str] = []

    @contextlib.contextmanager
    def __call__(self, traceparent: str, attributes: dict[str, str]) -> Iterator[str]:
        self.parents.append(traceparent)
        yield traceparent.split("-")[1] if traceparent else "0" * 32


class Setup:
    def __init__(self, **config: Any) -> None:
        self.store, self.states, self.detector = FakeStore(), FakeStates(), FakeDetector()
        self.metrics, self.spans = RunnerMetrics(), Spans()
        settings: dict[str, Any] = {
            "runner_id": "runner-a",
            "sample_fps": 2.0,
            "max_video_bytes": 1000,
            "max_sampled_frames": 100,
            "max_result_bytes": 1 << 20,
            "detect_batch": 1,
            "max_attempts": 3,
            "retry_initial_s": 0.01,
            "retry_max_s": 0.02,
            "temp_dir": None,
            "result_key": lambda e: f"output/{e.video_id}.json",
            "buckets": frozenset({"videos"}),
            **config,
        }
        self.decoder = FakeDecoder()
        self.processor = Processor(
            store=self.store,
            states=self.states,
            decoder=self.decoder,
            detectors=[self.detector],
            config=ProcessorConfig(**settings),
            metrics=self.metrics,
            span=self.spans,
        )

    async def handle(self, delivery: ConsumedRecord | None = None) -> Handled:
        return await self.processor.handle(delivery or record(), asyncio.Event())

    def result(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.store.objects[OUTPUT])
        return loaded

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_a_video_gets_its_result_through_the_three_states() -> None:
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=60, fps=10)

    assert await s.handle() is Handled.OK

    result = s.result()
    assert (result["status"], result["event_id"], result["video_id"]) == ("ok", EVENT, VIDEO)
    assert result["video"] == {
        "width": 64,
        "height": 48,
        "fps": 10.0,
        "frame_count": 60,
        "duration_s": 6.0,
    }
    assert result["detector"] == {"name": "fake", "version": "fake 1"}
    assert [f["index"] for f in result["frames"]] == list(range(0, 60, 5))
    assert [f["timestamp_s"] for f in result["frames"]] == [i / 10 for i in range(0, 60, 5)]
    odd = [f for f in result["frames"] if f["index"] % 2]
    assert all(
        f["detections"]
        == [{"label": "face", "score": 0.9, "box": {"x1": 1, "y1": 2, "x2": 11, "y2": 12}}]
        for f in odd
    )
    assert all(f["detections"] == [] for f in result["frames"] if f["index"] % 2 == 0)
    assert result["truncated"] is False
    assert s.states.history == [
        (EVENT, VideoState.PROCESSING),
        (EVENT, VideoState.PREDICTABLE),
        (EVENT, VideoState.READY),
    ]
    assert s.states.records[EVENT]["outcome"] == "ok"
    assert s.states.records[EVENT]["trace_id"] == TRACEPARENT.split("-")[1]
    assert s.spans.parents == [TRACEPARENT]
    assert s.store.puts == [OUTPUT]
    assert s.count("checkout_runner_frames_total") == 12
    assert s.count("checkout_runner_last_video_frames_per_second") > 0
    assert s.count("checkout_runner_video_seconds_count") == 1
    assert s.count("checkout_runner_videos_in_progress") == 0
    assert s.count("checkout_runner_videos_total", outcome="ok") == 1


async def test_a_redelivery_of_a_ready_event_is_skipped() -> None:
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=10)
    await s.handle()

    assert await s.handle() is Handled.SKIPPED

    assert s.store.puts == [OUTPUT]  # no second write
    assert s.detector.calls == 2
    assert s.count("checkout_runner_videos_total", outcome="skipped") == 1


async def test_the_record_of_an_earlier_event_with_the_same_id_is_not_this_ones() -> None:
    """An event deleted by Cleanup and recorded again (docs/runner.md, "Cleanup") comes with
    the same id and a later created_at: the old record, ready or worn out by attempts, is not
    its record; the event is processed from its first attempt."""
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=10)
    for _ in range(5):  # more attempts than RUNNER_MAX_ATTEMPTS
        await begun(s, CREATED - timedelta(minutes=10))
    await s.states.advance(EVENT, VideoState.READY)

    assert await s.handle() is Handled.OK

    assert s.store.puts == [OUTPUT]
    assert s.result()["status"] == "ok"
    assert (s.states.records[EVENT]["attempts"], s.states.records[EVENT]["state"]) == (1, "ready")
    assert await s.handle() is Handled.SKIPPED  # and its own record still skips a redelivery


async def test_a_result_stored_before_a_crash_is_not_written_again() -> None:
    s = Setup()
    await begun(s)
    await s.states.advance(EVENT, VideoState.PREDICTABLE)
    s.store.objects[OUTPUT] = b"{}"
    s.store.written[OUTPUT] = CREATED + timedelta(minutes=1)

    assert await s.handle() is Handled.SKIPPED

    assert s.store.puts == []
    assert s.states.records[EVENT]["state"] == "ready"


async def test_an_older_result_is_not_taken_for_the_events() -> None:
    """A re-request's record: the result at the key is from an earlier event of the video."""
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=10)
    await begun(s)
    await s.states.advance(EVENT, VideoState.PREDICTABLE)
    s.store.written[OUTPUT] = CREATED - timedelta(hours=1)

    assert await s.handle() is Handled.OK

    assert s.store.puts == [OUTPUT]


async def test_an_undecodable_video_gets_a_failure_result() -> None:
    s = Setup()
    s.store.objects[INPUT] = b"\x00\x00\x00\x18ftypisom garbage"

    assert await s.handle() is Handled.FAILED

    result = s.result()
    assert result["status"] == "failed"
    assert result["error"]["reason"] == "VIDEO_UNDECODABLE"
    assert result["error"]["message"]
    assert "frames" not in result
    assert s.states.records[EVENT]["outcome"] == "failed"
    assert s.states.records[EVENT]["reason"] == "VIDEO_UNDECODABLE"
    assert s.count("checkout_runner_failures_total", reason="VIDEO_UNDECODABLE") == 1


async def test_a_video_without_frames_gets_a_failure_result() -> None:
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=0)

    assert await s.handle() is Handled.FAILED

    assert s.result()["error"]["reason"] == "VIDEO_UNDECODABLE"


async def test_a_missing_or_too_large_video_gets_a_failure_result() -> None:
    s = Setup()
    assert await s.handle() is Handled.FAILED
    assert s.result()["error"]["reason"] == "VIDEO_NOT_FOUND"

    s = Setup(max_video_bytes=5)
    s.store.objects[INPUT] = fake_video(frames=10)
    s.store.download_errors.append(VideoTooLarge("over 5 bytes"))
    assert await s.handle() is Handled.FAILED
    assert s.result()["error"]["reason"] == "VIDEO_TOO_LARGE"


async def test_outages_are_retried_without_counting_as_attempts() -> None:
    s = Setup(max_attempts=1)
    s.store.objects[INPUT] = fake_video(frames=10)
    s.store.download_errors.extend(Outage("down") for _ in range(3))
    s.store.put_errors.append(Outage("down"))

    assert await s.handle() is Handled.OK

    assert s.result()["status"] == "ok"
    assert s.states.records[EVENT]["attempts"] == 5  # every attempt begun is recorded
    assert s.count("checkout_runner_failures_total", reason="STORAGE_UNAVAILABLE") == 4


async def test_a_bug_is_retried_then_the_event_gets_a_failure_result() -> None:
    s = Setup(max_attempts=2)
    s.store.objects[INPUT] = fake_video(frames=10)
    s.detector.error = RuntimeError("a bug")

    assert await s.handle() is Handled.FAILED

    result = s.result()
    assert result["error"]["reason"] == "PROCESSING_FAILED"
    assert "2 attempts" in result["error"]["message"]
    assert s.count("checkout_runner_failures_total", reason="INTERNAL") == 2


async def test_stopping_during_an_outage_leaves_the_event_unfinished() -> None:
    s = Setup(retry_initial_s=5.0, retry_max_s=5.0)
    s.store.objects[INPUT] = fake_video(frames=10)
    s.store.download_errors.append(Outage("down"))
    stop = asyncio.Event()
    task = asyncio.create_task(s.processor.handle(record(), stop))
    await asyncio.wait_for(s.store.download_failed.wait(), 5)
    stop.set()

    assert await asyncio.wait_for(task, 2) is Handled.STOPPED
    assert s.store.puts == []


async def test_a_record_that_is_no_envelope_of_ours_is_skipped() -> None:
    s = Setup()
    for bad in (
        ConsumedRecord(topic="t", partition=0, offset=1, value=b"not json"),
        record(version=2),
        record(type="something.else"),
        record(video_id=None),
        record(created_at="yesterday"),
    ):
        assert await s.handle(bad) is Handled.INVALID
    assert s.store.puts == []
    assert s.count("checkout_runner_videos_total", outcome="invalid") == 5


async def test_detection_stops_at_the_frame_limit_and_says_so() -> None:
    s = Setup(max_sampled_frames=3)
    s.store.objects[INPUT] = fake_video(frames=100)

    assert await s.handle() is Handled.OK

    assert [f["index"] for f in s.result()["frames"]] == [0, 5, 10]
    assert s.result()["truncated"] is True


async def test_stopping_during_detection_leaves_the_video_at_the_next_frame() -> None:
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=60, fps=10)
    stop, loop = asyncio.Event(), asyncio.get_running_loop()

    def stop_at_first_frame() -> None:  # in the worker thread, as the detector runs
        loop.call_soon_threadsafe(stop.set)

    s.detector.hook = stop_at_first_frame
    task = asyncio.create_task(s.processor.handle(record(), stop))

    assert await asyncio.wait_for(task, 5) is Handled.STOPPED
    assert s.detector.calls == 1  # not one frame more
    assert s.decoder.closed == 1  # the decoding ended with it
    assert s.store.puts == []
    assert s.states.records[EVENT]["state"] == "processing"


async def test_stopping_while_the_decoder_is_stuck_leaves_the_video_at_once() -> None:
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=60, fps=10, stall_at=20)
    stop = asyncio.Event()
    task = asyncio.create_task(s.processor.handle(record(), stop))
    await asyncio.wait_for(s.decoder.stalled.wait(), 5)

    stop.set()

    assert await asyncio.wait_for(task, 2) is Handled.STOPPED
    assert s.detector.calls == 4  # frames 0, 5, 10, 15
    assert s.decoder.closed == 1
    assert s.store.puts == []


async def test_frames_go_to_the_detector_in_batches_of_one_shape() -> None:
    """RUNNER_DETECT_BATCH frames a call; a frame of another size (the stream changed its
    resolution) starts a batch of its own; the result is the same as one frame a call."""
    one = Setup()
    one.store.objects[INPUT] = fake_video(frames=60, fps=10, wide_from=35)
    assert await one.handle() is Handled.OK

    s = Setup(detect_batch=4)
    s.store.objects[INPUT] = fake_video(frames=60, fps=10, wide_from=35)
    assert await s.handle() is Handled.OK

    assert s.detector.batches == [4, 3, 4, 1]  # samples 0..30, then 35..55
    assert one.detector.batches == [1] * 12
    assert s.result()["frames"] == one.result()["frames"]


async def test_boxes_are_reported_in_the_frames_own_pixels() -> None:
    """The decoder hands over frames scaled to the detection size: the detector's boxes are
    scaled back to the frame's own size, and clipped to it."""
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=10, fps=10, scale=3)
    s.detector.box = Box(x1=1, y1=2, x2=11, y2=200)

    assert await s.handle() is Handled.OK

    found = [d for f in s.result()["frames"] for d in f["detections"]]
    assert found
    assert {tuple(d["box"].values()) for d in found} == {(3.0, 6.0, 33.0, 144.0)}
    assert s.result()["video"]["width"] == 192


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_a_detector_that_returns_no_number_fails_the_video_at_once(bad: float) -> None:
    s = Setup(max_attempts=3)
    s.store.objects[INPUT] = fake_video(frames=10)
    s.detector.box = Box(x1=1, y1=2, x2=bad, y2=12)

    assert await s.handle() is Handled.FAILED

    result = s.result()  # valid JSON: the value never reaches it
    assert result["error"]["reason"] == "DETECTOR_FAULT"
    assert "no number" in result["error"]["message"]
    assert s.states.records[EVENT]["attempts"] == 1  # not retried
    assert s.count("checkout_runner_failures_total", reason="DETECTOR_FAULT") == 1


@pytest.mark.parametrize(
    "reason",
    [
        "VIDEO_FRAME_TOO_LARGE",
        "VIDEO_TOO_LONG",
        "VIDEO_FRAME_RATE_TOO_HIGH",
        "VIDEO_TOO_MANY_FRAMES",
        "DECODE_TIMEOUT",
        "DECODE_CPU_EXCEEDED",
        "DECODE_MEMORY_EXCEEDED",
    ],
)
async def test_a_video_beyond_a_decoding_limit_fails_on_its_first_attempt(reason: str) -> None:
    s = Setup(max_attempts=3)
    s.store.objects[INPUT] = fake_video(frames=10, refuse=reason)

    assert await s.handle() is Handled.FAILED

    assert s.result()["error"] == {
        "reason": reason,
        "message": "refused at frame 0",
        "description": REFUSALS[reason].description,
    }
    assert s.states.records[EVENT]["attempts"] == 1
    assert s.decoder.closed == 1
    assert s.count("checkout_runner_failures_total", reason=reason) == 1


async def test_detection_stops_before_the_result_outgrows_its_bound() -> None:
    """RESULT_MAX_BYTES (what the server returns): the frames that fit are kept, the result
    says it was cut, and it is within the bound."""
    whole = Setup()
    whole.store.objects[INPUT] = fake_video(frames=100)
    assert await whole.handle() is Handled.OK
    sizes = [len(json.dumps(f, separators=(",", ":"))) + 1 for f in whole.result()["frames"]]

    bound = HEADER_MAX_BYTES + sum(sizes[:4]) + 5
    s = Setup(max_result_bytes=bound)
    s.store.objects[INPUT] = fake_video(frames=100)
    assert await s.handle() is Handled.OK

    assert s.result()["frames"] == whole.result()["frames"][:4]
    assert s.result()["truncated"] is True
    assert len(s.store.objects[OUTPUT]) <= bound
    assert whole.result()["truncated"] is False


async def test_two_records_of_one_event_in_a_batch_are_processed_once() -> None:
    """The relay delivers at least once, so one batch (RUNNER_CONCURRENCY > 1) may hold two
    records of an event: the second waits for the first and writes no second result."""
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=10)
    stop = asyncio.Event()

    outcomes = await asyncio.gather(
        s.processor.handle(record(), stop), s.processor.handle(record(), stop)
    )

    assert sorted(outcomes) == sorted([Handled.OK, Handled.SKIPPED])
    assert s.store.puts == [OUTPUT]
    assert s.states.history.count((EVENT, VideoState.PROCESSING)) == 1
    assert await s.handle() is Handled.SKIPPED  # and a later redelivery, as before
