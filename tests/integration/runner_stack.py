"""The detection runner's test stack: the relay and runner processes of one test, and the API
calls and checks the runner's integration tests share (test_runner.py, test_runner_inputs.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_runner.sample import Truth
from checkout_server.config import ServerSettings
from devstack import Kafka, free_port
from devstack._stack import PythonService, RunnerService
from tests.integration.metrics_scrape import scrape

if TYPE_CHECKING:
    Stub = pb_grpc.CheckoutServiceAsyncStub

CHUNK = 256 * 1024
TERMINAL = {"ready", "failed"}
# A detected face box matches the truth when they overlap this much (intersection / union).
MIN_IOU = 0.6
ADMIN_TOKEN = "runner-cleanup-token"


class Processes:
    """The relay and runner processes of one test (a topic and a group of its own)."""

    def __init__(self, settings: ServerSettings, kafka: Kafka, log_dir: Path) -> None:
        self.settings = settings
        self.kafka = kafka
        self.log_dir = log_dir
        self.topic = f"runner-test-{uuid.uuid4().hex[:10]}"
        self.group = f"runners-{uuid.uuid4().hex[:10]}"
        self.started: list[PythonService | RunnerService] = []

    def common(self) -> dict[str, str]:
        return {
            "MONGO_URI": self.settings.mongo_uri,
            "MONGO_DB": self.settings.mongo_db,
            "MINIO_ENDPOINT": self.settings.minio_endpoint,
            # The test's buckets: the runner refuses records of any other.
            "DEFAULT_BUCKET": self.settings.default_bucket,
            "ALLOWED_BUCKETS": ",".join(sorted(self.settings.allowed_buckets)),
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "KAFKA_TOPIC": self.topic,
            "LOG_FORMAT": "json",
        }

    def start_relay(self) -> PythonService:
        """The outbox relay; it creates the topic (3 partitions) at start."""
        port = free_port()
        relay = PythonService(
            name="relay",
            module="checkout_server.wiring.relay",
            port=port,
            env={
                **self.common(),
                "RELAY_HEALTH_ADDR": f"127.0.0.1:{port}",
                "RELAY_METRICS_ADDR": "",
                "RELAY_POLL_INTERVAL_S": "0.3",
            },
            log_path=self.log_dir / "relay.log",
        )
        relay.start(timeout_s=60)
        self.started.append(relay)
        return relay

    def runner(
        self, name: str, *, port: int = 0, env: dict[str, str] | None = None
    ) -> RunnerService:
        """A runner of this test's group (not started); `port`: its metrics port."""
        runner = RunnerService(
            name=name,
            port=port or free_port(),
            env={
                **self.common(),
                "RUNNER_ID": name,
                "RUNNER_GROUP_ID": self.group,
                "KAFKA_SESSION_TIMEOUT_MS": "6000",  # the broker's least
                "RUNNER_RETRY_INITIAL_S": "0.2",
                "RUNNER_RETRY_MAX_S": "2",
                **(env or {}),
            },
            log_path=self.log_dir / f"{name}.log",
        )
        self.started.append(runner)
        return runner

    def start_runner(self, name: str, env: dict[str, str] | None = None) -> RunnerService:
        runner = self.runner(name, env=env)
        runner.start(timeout_s=90)
        return runner

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


async def metric(runner: RunnerService, name: str, *, default: float | None = None) -> float:
    """The runner's sample `name` (with its labels); a missing series raises (a renamed metric
    must not read as 0), unless a `default` says what its absence means."""
    values = await scrape(runner.port)
    if name in values:
        return values[name]
    if default is None:
        raise AssertionError(f"no series {name} on {runner.name}'s /metrics")
    return default


async def upload(
    stub: Stub,
    data: bytes,
    filename: str = "clip.mp4",
    *,
    traceparent: str = "",
    idempotency_key: str = "",
) -> pb.UploadVideoResponse:
    def messages() -> Iterator[pb.UploadVideoRequest]:
        yield pb.UploadVideoRequest(
            metadata=pb.UploadMetadata(
                filename=filename,
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                idempotency_key=idempotency_key,
            )
        )
        for at in range(0, len(data), CHUNK):
            yield pb.UploadVideoRequest(chunk=data[at : at + CHUNK])

    metadata = (("traceparent", traceparent),) if traceparent else None
    return await stub.UploadVideo(messages(), metadata=metadata)


async def watch(stub: Stub, event_id: str, timeout_s: float = 180) -> list[str]:
    """The statuses WatchStatus reports until `ready` or `failed` (heartbeats left out)."""
    seen: list[str] = []
    async with asyncio.timeout(timeout_s):
        async for update in stub.WatchStatus(pb.WatchStatusRequest(event_id=event_id)):
            if update.heartbeat:
                continue
            if not seen or seen[-1] != update.status:
                seen.append(update.status)
            if update.status in TERMINAL:
                break
    return seen


async def cleanup(stub: Stub) -> pb.CleanupResponse:
    return await stub.Cleanup(
        pb.CleanupRequest(), metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)
    )


async def prediction_of(stub: Stub, event_id: str) -> dict[str, Any]:
    response = await stub.GetResult(pb.GetResultRequest(event_id=event_id))
    assert response.status == "ready"
    return MessageToDict(response.prediction)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def assert_faces_where_they_are(prediction: dict[str, Any], truth: Truth) -> int:
    """Every sampled frame's face boxes within MIN_IOU of the truth, as many as the truth has,
    none on background-only frames; how many frames had faces."""
    with_faces = 0
    for frame in prediction["frames"]:
        expected = truth.frames[int(frame["index"])]
        found = frame["detections"]
        if not expected:
            assert found == [], f"a detection on background-only frame {frame['index']}"
            continue
        with_faces += 1
        assert len(found) == len(expected), frame
        for box in expected:
            best = max(
                iou(tuple(box), tuple(d["box"][k] for k in ("x1", "y1", "x2", "y2"))) for d in found
            )
            assert best >= MIN_IOU, (frame["index"], box, found)
        assert all(d["label"] == "face" and d["score"] >= 0.5 for d in found)
        assert all(len(d["landmarks"]) == 5 for d in found)
    return with_faces


def relay_record(event_id: str, bucket: str, **changes: Any) -> bytes:
    """A Kafka record as the relay writes one for `event_id` (its video the same id, 1000
    bytes), with `changes` to its fields: what a test puts on the topic itself."""
    return json.dumps(
        {
            "version": 1,
            "event_id": event_id,
            "type": "checkout.video.uploaded",
            "video_id": event_id,
            "bucket": bucket,
            "object_key": f"input/{event_id}.mp4",
            "size_bytes": 1000,
            "sha256": "",
            "created_at": "2026-12-06T10:00:00.000+00:00",
            **changes,
        }
    ).encode()
