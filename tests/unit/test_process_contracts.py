"""What one process writes, the other reads: the relay's Kafka record through the runner's
parser, the runner's result documents through the server's status and result reading, and
the settings both read from one environment (defaults; the rules of reading them, result
keys and flags, are checkout_common's, tested in test_common.py). The server and the runner
share no code but checkout_common (import-linter); these tests import both sides."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import jsonschema_rs
import pytest

from checkout_common import status_message
from checkout_common.input_key import input_key
from checkout_common.result_key import result_prefix
from checkout_common.settings import EnvSettings
from checkout_runner import envelope, result
from checkout_runner.config import RunnerSettings
from checkout_runner.domain import (
    Analysis,
    Box,
    ConsumedRecord,
    Detection,
    FrameResult,
    VideoEvent,
    VideoInfo,
)
from checkout_runner.errors import FAILURE_RESULTS, EnvelopeError, Refusal, RunnerError
from checkout_runner.errors import ConfigError as RunnerConfigError
from checkout_server.adapters.kafka_status import KafkaStatusFeed
from checkout_server.config import RelaySettings, ServerSettings
from checkout_server.domain import ANONYMOUS, EventStatus, input_object_key
from checkout_server.errors import ConfigError as ServerConfigError
from checkout_server.outbox.announcement import message_of
from checkout_server.relay.envelope import build_message
from checkout_server.relay.ports import PendingEvent
from checkout_server.status.service import StatusService
from checkout_server.upload.sweeper import video_id_of
from tests.fakes import NOW, FakeOutbox, FakeStorage, status_service
from tests.helpers import has_cyrillic, outbox_event
from tools.contract import SCHEMAS, schema_problems

pytestmark = pytest.mark.timeout(10)

VIDEO = "0b6e3f5e-8d4f-4e1a-9a51-8c3c0d9f2b10"
KEY = ("videos", f"output/{VIDEO}.json")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
# The buckets a runner allows with no setting (ALLOWED_BUCKETS, DEFAULT_BUCKET: "videos").
BUCKETS = RunnerSettings.from_env({}).allowed_buckets


def runner_event() -> VideoEvent:
    """The event as the runner gets it from the relay's record of the outbox event."""
    pending = PendingEvent(
        event_id=VIDEO,
        video_id=VIDEO,
        payload={
            "bucket": ServerSettings.from_env({}).default_bucket,
            "object_key": input_object_key(VIDEO),  # the server's key of an upload
            "size_bytes": 7,
        },
        created_at=NOW,
    )
    message = build_message(pending, traceparent=TRACEPARENT)
    record = ConsumedRecord(
        topic="t", partition=0, offset=0, value=message.value, headers=tuple(message.headers)
    )
    return envelope.parse(record, buckets=BUCKETS)


def test_the_relays_record_is_the_event_the_runner_reads() -> None:
    event = runner_event()
    assert (event.event_id, event.video_id, event.bucket, event.object_key) == (
        VIDEO,
        VIDEO,
        "videos",
        f"input/{VIDEO}.mp4",
    )
    assert event.size_bytes == 7
    assert event.created_at == NOW
    assert event.traceparent == TRACEPARENT


async def status_of(document: bytes, *, max_bytes: int = 3 << 20) -> StatusService:
    storage, outbox = FakeStorage(), FakeOutbox()
    await outbox.add(outbox_event(VIDEO, video_id=VIDEO, status=EventStatus.SENT, at=NOW))
    storage.objects[KEY] = document
    storage.modified[KEY] = NOW + timedelta(seconds=30)
    return status_service(
        storage,
        outbox,
        result_max_bytes=max_bytes,
        clock=lambda: NOW + timedelta(minutes=1),
    )


@pytest.mark.parametrize("error", FAILURE_RESULTS, ids=lambda cls: cls.reason)
async def test_each_failure_result_of_the_runner_makes_the_event_failed_with_it(
    error: type[RunnerError],
) -> None:
    document = result.failure(runner_event(), error("what went wrong"))

    got = await (await status_of(document)).get(VIDEO, ANONYMOUS)

    assert got.api_status is EventStatus.FAILED
    assert got.error == f"{error.reason}: what went wrong"


@pytest.mark.parametrize("error", FAILURE_RESULTS, ids=lambda cls: cls.reason)
def test_each_failure_result_describes_its_reason_in_russian(error: type[RunnerError]) -> None:
    written = json.loads(result.failure(runner_event(), error("m")))["error"]

    assert has_cyrillic(written["description"]), written
    assert written["description"] == error.description


def success_document() -> bytes:
    """The runner's success result for a video with a face in its second sampled frame."""
    face = Detection(
        label="face",
        score=0.92,
        box=Box(x1=1.5, y1=2.0, x2=30.0, y2=40.0),
        landmarks=((5.0, 6.0),) * 5,
    )
    analysis = Analysis(
        video=VideoInfo(width=640, height=480, fps=10.0, frame_count=60, duration_s=6.0),
        frames=[
            FrameResult(index=0, timestamp_s=0.0),
            FrameResult(index=5, timestamp_s=0.5, detections=(face,)),
        ],
    )
    return result.success(
        runner_event(), analysis, detector=("centerface", "v"), sample_fps=2.0, truncated=False
    )


async def test_the_runners_success_result_is_the_prediction_the_server_returns() -> None:
    document = success_document()
    service = await status_of(document)

    got = await service.get(VIDEO, ANONYMOUS)
    read = await service.result(VIDEO, ANONYMOUS)

    assert got.api_status is EventStatus.READY
    assert got.error == ""
    assert read.prediction == json.loads(document)
    assert read.prediction is not None
    assert read.prediction["frames"][1]["detections"][0]["box"] == {
        "x1": 1.5,
        "y1": 2.0,
        "x2": 30.0,
        "y2": 40.0,
    }


def test_the_settings_both_read_have_the_same_defaults() -> None:
    """One environment serves both: a default that differs splits them silently (a result
    larger than the server returns, results written where the server does not look)."""
    server, relay = ServerSettings.from_env({}), RelaySettings.from_env({})
    runner = RunnerSettings.from_env({})
    assert runner.result_max_bytes == server.result_max_bytes
    assert runner.result_key_template == server.result_key_template
    assert runner.kafka_topic == relay.kafka_topic
    assert runner.status_topic == relay.status_topic == server.status_topic
    assert runner.mongo_db == server.mongo_db


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MINIO_SECURE": "maybe"}, "MINIO_SECURE"),  # the runner used to take it for false
        ({"RESULT_KEY_TEMPLATE": "output/result.json"}, "RESULT_KEY_TEMPLATE"),
        ({"MONGO_TIMEOUT_MS": "soon"}, "MONGO_TIMEOUT_MS"),
    ],
)
def test_one_environment_stops_the_server_and_the_runner_alike(
    env: dict[str, str], variable: str
) -> None:
    """Both read their settings by checkout_common's rules (test_common.py tests them), each
    raising its own ConfigError naming the variable."""
    assert issubclass(ServerSettings, EnvSettings)
    assert issubclass(RunnerSettings, EnvSettings)
    with pytest.raises(ServerConfigError, match=variable):
        ServerSettings.from_env(env)
    with pytest.raises(RunnerConfigError, match=variable):
        RunnerSettings.from_env(env)


def test_the_servers_result_key_is_the_runners() -> None:
    """The runner writes where the server's status service looks, and the cleanup's folder
    holds it."""
    template = "results/{event_id}/{video_id}.json"
    runner = RunnerSettings.from_env({"RESULT_KEY_TEMPLATE": template})
    server = status_service(FakeStorage(), FakeOutbox(), result_key_template=template)
    event = outbox_event("e", video_id="v")
    key = runner.result_key(video_id="v", event_id="e")
    assert key == server.result_key(event) == "results/e/v.json"
    assert key.startswith(result_prefix(template))


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"ALLOWED_BUCKETS": "archive, raw ,"},
        {"DEFAULT_BUCKET": "uploads"},
        {"DEFAULT_BUCKET": "uploads", "ALLOWED_BUCKETS": "archive,uploads"},
    ],
)
def test_the_server_and_the_runner_allow_the_same_buckets(env: dict[str, str]) -> None:
    """One environment: the runner takes records of every bucket the server stores uploads
    in (the default one included), and of no other."""
    server = ServerSettings.from_env(env)
    runner = RunnerSettings.from_env(env)
    assert runner.allowed_buckets == server.allowed_buckets
    assert runner.default_bucket == server.default_bucket


def test_the_server_stores_uploads_at_the_key_the_runner_reads() -> None:
    assert input_object_key(VIDEO) == input_key(VIDEO) == f"input/{VIDEO}.mp4"
    assert video_id_of(input_object_key(VIDEO)) == VIDEO  # the sweeper reads it back


# --- the JSON Schemas of contract/ --------------------------------------------------------


def schema(name: str) -> jsonschema_rs.Validator:
    document = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return jsonschema_rs.validator_for(document, validate_formats=True)


def example(name: str) -> bytes:
    return (SCHEMAS / "examples" / f"{name}.json").read_bytes()


def test_the_schemas_and_their_examples_are_valid() -> None:
    assert schema_problems() == []


def test_a_broken_schema_or_example_is_found(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "thing.v1.schema.json").write_text(json.dumps({"type": "nonsense"}))
    (tmp_path / "other.v1.schema.json").write_text(json.dumps({"required": ["a"]}))
    (tmp_path / "examples" / "other.v1.json").write_text(json.dumps({"b": 1}))
    problems = schema_problems(tmp_path)
    assert any(p.startswith("thing.v1.schema.json: not a valid JSON Schema") for p in problems)
    assert any(p.startswith("other.v1.json: ") and '"a" is a required' in p for p in problems)


def test_the_relays_record_is_what_its_schema_says() -> None:
    pending = PendingEvent(
        event_id=VIDEO,
        video_id=VIDEO,
        payload={
            "bucket": "videos",
            "object_key": input_object_key(VIDEO),
            "size_bytes": 7,
            "sha256": "",
        },
        created_at=NOW,
    )
    schema("video-uploaded.v1").validate(json.loads(build_message(pending).value))


def test_the_status_topics_records_are_what_its_schema_says() -> None:
    """A server's or relay's status change, and the runner's announcement of a result, as
    each writes them; the server reads the runner's as a result to check."""
    sent = outbox_event(VIDEO, at=NOW, status=EventStatus.SENT, owner="camera")
    schema("status.v1").validate(json.loads(message_of(sent)))
    key = RunnerSettings.from_env({}).result_key(video_id=VIDEO, event_id=VIDEO)
    written = status_message.result_written(
        event_id=VIDEO, video_id=VIDEO, bucket="videos", result_key=key, written_at=NOW
    )
    schema("status.v1").validate(json.loads(written))
    hinted: list[str] = []
    feed = KafkaStatusFeed(
        consumer_factory=lambda: pytest.fail("not started"),
        topic="t",
        on_change=lambda e: pytest.fail("not a change"),
        on_result=hinted.append,
        on_live=lambda live: None,
    )
    feed.handle(written)
    assert hinted == [VIDEO]


def test_the_runner_reads_the_schemas_example_record() -> None:
    value = json.loads(example("video-uploaded.v1"))
    schema("video-uploaded.v1").validate(value)
    event = envelope.parse(
        ConsumedRecord(topic="t", partition=0, offset=0, value=json.dumps(value).encode()),
        buckets=BUCKETS,
    )
    assert (event.event_id, event.video_id, event.bucket, event.object_key, event.size_bytes) == (
        value["event_id"],
        value["video_id"],
        value["bucket"],
        value["object_key"],
        value["size_bytes"],
    )
    # A field added within version 1 is ignored, as the schema tells consumers.
    envelope.parse(
        ConsumedRecord(
            topic="t", partition=0, offset=0, value=json.dumps({**value, "new": 1}).encode()
        ),
        buckets=BUCKETS,
    )


OTHER = "1d2e3f40-5a6b-4c7d-8e9f-0a1b2c3d4e5f"


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"version": 2}, Refusal.VERSION),
        ({"version": True}, Refusal.VERSION),
        ({"type": "checkout.video.deleted"}, Refusal.TYPE),
        ({"event_id": "e1"}, Refusal.EVENT_ID),
        ({"event_id": VIDEO.upper()}, Refusal.EVENT_ID),
        ({"video_id": "../../etc/passwd"}, Refusal.VIDEO_ID),
        ({"video_id": f"{VIDEO}\n"}, Refusal.VIDEO_ID),
        ({"bucket": ""}, Refusal.BUCKET),
        ({"object_key": "output/x.json"}, Refusal.OBJECT_KEY),
        ({"object_key": f"input/{VIDEO}.MP4"}, Refusal.OBJECT_KEY),
        ({"size_bytes": -1}, Refusal.SIZE),
        ({"size_bytes": "7"}, Refusal.SIZE),
        ({"sha256": "ABC"}, Refusal.SHA256),
        ({"created_at": "2026-12-06"}, Refusal.CREATED_AT),
        ({"created_at": "2026-12-06T07:00:00"}, Refusal.CREATED_AT),
    ],
)
def test_what_the_schema_refuses_the_runner_refuses(
    changes: dict[str, object], refusal: Refusal
) -> None:
    """The schema and the runner's parser agree on every field the schema constrains."""
    value = {**json.loads(example("video-uploaded.v1")), **changes}
    assert not schema("video-uploaded.v1").is_valid(value)
    with pytest.raises(EnvelopeError) as refused:
        envelope.parse(
            ConsumedRecord(topic="t", partition=0, offset=0, value=json.dumps(value).encode()),
            buckets=BUCKETS,
        )
    assert refused.value.refusal is refusal


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"bucket": "other"}, Refusal.BUCKET),  # the allow-list is the deployment's
        ({"object_key": f"input/{OTHER}.mp4"}, Refusal.OBJECT_KEY),  # another video's key
    ],
)
def test_what_the_schema_cannot_say_the_runner_refuses_too(
    changes: dict[str, object], refusal: Refusal
) -> None:
    """Valid by the schema, refused by the runner: a bucket not on ALLOWED_BUCKETS, another
    video's key (JSON Schema cannot tie one field to another)."""
    value = {**json.loads(example("video-uploaded.v1")), **changes}
    assert schema("video-uploaded.v1").is_valid(value)
    with pytest.raises(EnvelopeError) as refused:
        envelope.parse(
            ConsumedRecord(topic="t", partition=0, offset=0, value=json.dumps(value).encode()),
            buckets=BUCKETS,
        )
    assert refused.value.refusal is refusal


@pytest.mark.parametrize("error", FAILURE_RESULTS, ids=lambda cls: cls.reason)
def test_the_runners_failure_results_are_what_the_schema_says(error: type[RunnerError]) -> None:
    schema("result.v1").validate(json.loads(result.failure(runner_event(), error("m"))))


def test_the_runners_success_result_is_what_the_schema_says() -> None:
    schema("result.v1").validate(json.loads(success_document()))


async def test_the_server_reads_the_schemas_example_results() -> None:
    failed = json.loads(example("result.v1.failed"))
    got = await (await status_of(example("result.v1.failed"))).get(VIDEO, ANONYMOUS)
    assert got.api_status is EventStatus.FAILED
    assert got.error == f"{failed['error']['reason']}: {failed['error']['message']}"

    service = await status_of(example("result.v1.ok"))
    assert (await service.get(VIDEO, ANONYMOUS)).api_status is EventStatus.READY
    read = await service.result(VIDEO, ANONYMOUS)
    assert read.prediction == json.loads(example("result.v1.ok"))
