"""The detection runner on what users and attackers send it, end to end (the server in-process,
the relay and one runner as real processes, the session's FerretDB, MinIO and Kafka): clips of
many sizes in several orders through one runner find the faces each finds alone; hostile
videos end `failed` with their reasons on the first attempt while the runner stays up and
small; the README's demo reaches `ready` through the CLI after other videos; a starting runner
removes the downloads a killed one left.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaProducer
from miniopy_async.api import Minio
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_runner.adapters.centerface import CenterFaceDetector
from checkout_runner.adapters.isolated_decoder import IsolatedDecoder
from checkout_runner.config import RunnerSettings
from checkout_runner.downloads import download_folder
from checkout_runner.sample import Truth, write_sample
from checkout_server.outbox.document import Document
from checkout_server.wiring.server import App
from devstack import Kafka
from devstack._stack import PythonService, RunnerService
from tests.hostile_videos import HOSTILE
from tests.integration.console import checkout
from tests.integration.metrics_scrape import scrape
from tests.integration.runner_stack import (
    Processes,
    assert_faces_where_they_are,
    metric,
    prediction_of,
    relay_record,
    upload,
    watch,
)
from tests.integration.storage_checks import object_keys, wait_until

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

# Sizes the runner meets one after another; 1920x1080 is scaled to 1280x720 by the decoder.
SIZES = [(256, 192), (640, 480), (1280, 720), (1920, 1080)]
ORDERS = [SIZES, SIZES[::-1], [SIZES[2], SIZES[0], SIZES[3], SIZES[1]]]
# A box the runner reports after other videos and the same clip's box with a fresh detector
# may differ this much, in pixels (the same model on the same frames: only float noise).
BOX_TOLERANCE_PX = 1.0
RUNNER = str(Path(sys.executable).with_name("checkout-runner"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, int], tuple[Path, Truth]]:
    """The demo clip, 4 s, at each of SIZES."""
    folder = tmp_path_factory.mktemp("sizes")
    made = {}
    for width, height in SIZES:
        path = folder / f"clip-{width}x{height}.mp4"
        made[(width, height)] = path, write_sample(path, seconds=4.0, size=(width, height))
    return made


async def alone(path: Path) -> dict[int, list[tuple[float, ...]]]:
    """The clip's face boxes by frame index, found by a fresh detector that saw nothing else
    (the runner's decoder and detector, in this process, scaled as the runner scales)."""
    settings = RunnerSettings.from_env({})
    detector = CenterFaceDetector()
    boxes: dict[int, list[tuple[float, ...]]] = {}
    async with IsolatedDecoder(settings.decode_limits).open(path, every_s=0.5) as video:
        async for s in video.samples():
            height, width = s.image.shape[:2]
            found = (await asyncio.to_thread(detector.detect, [s.image]))[0]
            scaled = [
                d.scaled(s.width / width, s.height / height, s.width, s.height) for d in found
            ]
            boxes[s.index] = [(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in scaled]
    return boxes


def boxes_of(prediction: dict[str, Any]) -> dict[int, list[tuple[float, ...]]]:
    return {
        int(f["index"]): [
            tuple(d["box"][k] for k in ("x1", "y1", "x2", "y2")) for d in f["detections"]
        ]
        for f in prediction["frames"]
    }


def rss_bytes(runner: RunnerService) -> int:
    for line in Path(f"/proc/{runner.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_clips_of_many_sizes_find_in_any_order_what_each_finds_alone(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    clips: dict[tuple[int, int], tuple[Path, Truth]],
) -> None:
    """The runner's first bug: after videos of a few sizes, every later video ended `failed`
    (OpenCV's DNN module kept part of an earlier input size). One runner process takes the
    clip at four sizes, in three orders: every result has the truth's faces (IoU >= 0.6),
    nothing on the background-only frames, and the boxes a fresh detector finds."""
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    expected = {size: await alone(path) for size, (path, _) in clips.items()}

    for order in ORDERS:
        for size in order:
            path, truth = clips[size]
            uploaded = await upload(stub, path.read_bytes(), f"clip-{size[0]}x{size[1]}.mp4")
            seen = await watch(stub, uploaded.event_id)
            assert seen[-1] == "ready", (size, seen)
            prediction = await prediction_of(stub, uploaded.event_id)
            assert (prediction["video"]["width"], prediction["video"]["height"]) == size
            assert assert_faces_where_they_are(prediction, truth) == 4, size
            got = boxes_of(prediction)
            assert got.keys() == expected[size].keys(), size
            for index, boxes in expected[size].items():
                assert len(got[index]) == len(boxes), (size, index)
                for a, b in zip(sorted(got[index]), sorted(boxes), strict=True):
                    assert max(abs(u - v) for u, v in zip(a, b, strict=True)) <= BOX_TOLERANCE_PX
    assert await metric(runner, 'checkout_runner_videos_total{outcome="ok"}') == 12


async def test_hostile_videos_fail_at_once_and_the_runner_stays_up_and_small(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    clips: dict[tuple[int, int], tuple[Path, Truth]],
    tmp_path: Path,
) -> None:
    """Each video of tests/hostile_videos.py ends `failed` with its reason on the first
    attempt, within seconds; the runner is the same process after them, its memory grown by
    less than 100 MiB, and the next honest video still finds its faces."""
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    path, truth = clips[(640, 480)]
    warm_up = await upload(stub, path.read_bytes())  # the model and its buffers in memory
    assert (await watch(stub, warm_up.event_id))[-1] == "ready"
    pid, rss_before = runner.pid, rss_bytes(runner)

    for name, (make, reason) in sorted(HOSTILE.items()):
        video = tmp_path / name
        await asyncio.to_thread(make, video)
        uploaded = await upload(stub, video.read_bytes(), f"{name}.mp4")
        started = time.monotonic()
        seen = await watch(stub, uploaded.event_id, timeout_s=60)
        took = time.monotonic() - started
        assert seen[-1] == "failed", (name, seen)
        operation = (
            await stub.GetStatus(pb.GetStatusRequest(event_id=uploaded.event_id))
        ).operation
        assert operation.error.startswith(f"{reason}: "), (name, operation.error)
        assert took < 30, (name, took)

    assert runner.pid == pid
    assert runner.running
    assert rss_bytes(runner) - rss_before < 100 * 1024 * 1024
    assert await metric(runner, 'checkout_runner_videos_total{outcome="failed"}') == len(HOSTILE)
    # Each counted under its reason, once: on the first attempt, none a crash retried (those
    # count as INTERNAL).
    values = await scrape(runner.port)
    failures = {k: v for k, v in values.items() if k.startswith("checkout_runner_failures_total")}
    expected = Counter(reason for _, reason in HOSTILE.values())
    assert failures == {
        f'checkout_runner_failures_total{{reason="{reason}"}}': float(count)
        for reason, count in expected.items()
    }
    after = await upload(stub, path.read_bytes())
    assert (await watch(stub, after.event_id))[-1] == "ready"
    assert assert_faces_where_they_are(await prediction_of(stub, after.event_id), truth) == 4


async def test_forged_records_are_refused_unread_and_an_honest_upload_is_ready_after(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    kafka: Kafka,
    s3: Minio,
    bucket: str,
    other_bucket: str,
    mongo_database: AsyncDatabase[Document],
    clips: dict[tuple[int, int], tuple[Path, Truth]],
) -> None:
    """Records written straight to the topic, as anyone on the Kafka network could: a key
    outside input/, a bucket not on ALLOWED_BUCKETS, ids that are no UUIDs, a huge value and
    no JSON at all. A real video waits at each forged key. Each record is refused and counted
    under its reason, with nothing read for it and no result (nor state record) anywhere; the
    runner is the same process, its log lines bounded, and an honest upload after them is
    `ready`."""
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    pid = runner.pid
    path, truth = clips[(640, 480)]
    video = path.read_bytes()
    forbidden = f"forbidden-{uuid.uuid4().hex[:12]}"  # a bucket the runner's keys reach
    ids = [str(uuid.uuid4()) for _ in range(3)]
    not_a_uuid = f"not-a-uuid-{ids[2][:8]}"
    planted = {
        (bucket, f"private/{ids[0]}.mp4"),
        (forbidden, f"input/{ids[1]}.mp4"),
        (bucket, f"input/{not_a_uuid}.mp4"),
    }
    await s3.make_bucket(forbidden)
    try:
        for at_bucket, key in planted:
            await s3.put_object(at_bucket, key, io.BytesIO(video), len(video))
        forged = {
            "OBJECT_KEY_INVALID": relay_record(ids[0], bucket, object_key=f"private/{ids[0]}.mp4"),
            "BUCKET_NOT_ALLOWED": relay_record(ids[1], forbidden),
            "VIDEO_ID_INVALID": relay_record(
                ids[2], bucket, video_id=not_a_uuid, object_key=f"input/{not_a_uuid}.mp4"
            ),
            "EVENT_ID_INVALID": relay_record("e1", bucket, video_id=ids[0]),
            "NOT_JSON": b"\xff not json",
        }
        huge = relay_record(str(uuid.uuid4()), "b" * 300_000)  # BUCKET_NOT_ALLOWED again
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        try:
            for value in [*forged.values(), huge]:
                await producer.send_and_wait(processes.topic, value)
        finally:
            await producer.stop()

        expected = dict.fromkeys(forged, 1.0)
        expected["BUCKET_NOT_ALLOWED"] = 2.0

        async def refused() -> dict[str, float]:
            values = await scrape(runner.port)
            return {
                reason: values[f'checkout_runner_refused_records_total{{reason="{reason}"}}']
                for reason in expected
            }

        async def all_refused() -> bool:
            return await refused() == expected

        await wait_until(all_refused, timeout_s=60, what="every forged record refused")

        after = await upload(stub, video)
        assert (await watch(stub, after.event_id))[-1] == "ready"
        assert assert_faces_where_they_are(await prediction_of(stub, after.event_id), truth) == 4

        assert runner.pid == pid
        assert runner.running
        assert await refused() == expected  # none counted twice: committed, not redelivered
        total = sum(expected.values())
        assert await metric(runner, 'checkout_runner_videos_total{outcome="invalid"}') == total
        assert await metric(runner, 'checkout_runner_videos_total{outcome="ok"}') == 1
        assert await metric(runner, "checkout_runner_results_written_total") == 1
        values = await scrape(runner.port)
        assert not [k for k in values if k.startswith("checkout_runner_failures_total")]
        # Nothing written: the honest video's result is the only one, in any bucket; only
        # the honest event has a state record (a read would have begun one).
        everything = {
            name: sorted(await object_keys(s3, name, prefix=""))
            for name in (bucket, other_bucket, forbidden)
        }
        assert everything == {
            bucket: sorted(
                [
                    f"input/{after.video_id}.mp4",
                    f"output/{after.video_id}.json",
                    *(key for name, key in planted if name == bucket),
                ]
            ),
            other_bucket: [],
            forbidden: [f"input/{ids[1]}.mp4"],
        }
        states = mongo_database["runner_videos"]
        assert [r["_id"] async for r in states.find({}, {"_id": 1})] == [after.event_id]
        # The log names each refusal and shows a bounded part of what a record carried.
        lines = [
            line
            for line in (processes.log_dir / "runner-a.log").read_text().splitlines()
            if "record refused" in line
        ]
        assert sorted(json.loads(line)["reason"] for line in lines) == sorted(
            [*forged, "BUCKET_NOT_ALLOWED"]
        )
        assert max(len(line) for line in lines) < 500  # of a record of 300,000 characters
    finally:
        for name, key in planted:
            await s3.remove_object(name, key)
        await s3.remove_bucket(forbidden)


async def test_the_readme_demo_reaches_ready_after_other_videos(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    clips: dict[tuple[int, int], tuple[Path, Truth]],
    tmp_path: Path,
) -> None:
    """README, "See it work": `make sample` (checkout-runner sample), then `checkout upload
    sample.mp4 --watch`, on a runner that has processed videos of other sizes first."""
    await asyncio.to_thread(processes.start_runner, "runner-a")
    for size in [(1920, 1080), (256, 192)]:
        uploaded = await upload(stub, clips[size][0].read_bytes())
        assert (await watch(stub, uploaded.event_id))[-1] == "ready"
    made = await asyncio.to_thread(
        subprocess.run,
        [RUNNER, "sample", "sample.mp4", "--truth", "sample.truth.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "faces in 40" in made.stdout
    demo = await checkout(
        "--json",
        "upload",
        "sample.mp4",
        "--watch",
        address=f"127.0.0.1:{app.port}",
        cwd=tmp_path,
        timeout_s=240,
    )
    assert demo.code == 0, demo.stderr
    shown = demo.json()  # one document: the upload, its last status and its result
    assert shown["status"]["status"] == "ready", shown["status"]
    truth = Truth.from_json((tmp_path / "sample.truth.json").read_text())
    assert assert_faces_where_they_are(shown["result"]["prediction"], truth) == 8  # both faces


async def test_a_starting_runner_removes_the_downloads_a_killed_one_left(
    processes: Processes, tmp_path: Path
) -> None:
    """A runner killed mid-video leaves its download folder (on compose's shared volume, across
    restarts); the next runner to start removes it, and keeps the folder a live one holds."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    left = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", LEAVE_A_FOLDER, str(downloads)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    abandoned = Path(left.stdout.strip())
    assert (abandoned / "video").exists()
    with download_folder(downloads) as held:
        await asyncio.to_thread(
            processes.start_runner, "runner-a", {"RUNNER_TEMP_DIR": str(downloads)}
        )

        async def swept() -> bool:
            return not await asyncio.to_thread(abandoned.exists)

        await wait_until(swept, what="the abandoned download removed")
        assert held.exists()


# A process that makes a download folder with a video in it, then dies without cleaning up.
LEAVE_A_FOLDER = """
import os, sys, pathlib
from checkout_runner.downloads import download_folder
with download_folder(pathlib.Path(sys.argv[1])) as folder:
    (folder / "video").write_bytes(b"x" * 4096)
    print(folder, flush=True)
    os._exit(0)
"""
