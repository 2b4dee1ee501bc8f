"""Hostile Kafka records: whoever can write to the topic can send the runner anything. Each
field that is not what the relay writes (a UUID id, an allowed bucket, the server's key of
that very video, the schema's types) refuses the record before any read or write: no
download, no state record, no result anywhere (not even a failure result at a key the record
chose), counted by reason, the offset committed, the log showing a bounded part of it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from checkout_runner.config import RunnerSettings
from checkout_runner.consumer import ConsumerLoop
from checkout_runner.domain import ConsumedRecord
from checkout_runner.errors import Refusal
from checkout_runner.processor import Handled
from tests.runner_fakes import FakeSource, fake_video
from tests.unit.test_docs_tables import RUNNER
from tests.unit.test_runner_processor import INPUT, OUTPUT, VIDEO, Setup, record

pytestmark = pytest.mark.timeout(10)

OTHER = "1d2e3f40-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
HUGE = "x" * 1_000_000

REFUSED: list[tuple[str, ConsumedRecord, Refusal]] = [
    (
        "not JSON",
        ConsumedRecord(topic="t", partition=0, offset=1, value=b"\xff{"),
        Refusal.NOT_JSON,
    ),
    ("a list", ConsumedRecord(topic="t", partition=0, offset=1, value=b"[1]"), Refusal.NOT_JSON),
    ("version 2", record(version=2), Refusal.VERSION),
    ("version true", record(version=True), Refusal.VERSION),
    ("another type", record(type="checkout.video.deleted"), Refusal.TYPE),
    ("event_id missing", record(event_id=None), Refusal.EVENT_ID),
    ("event_id not a UUID", record(event_id="e1"), Refusal.EVENT_ID),
    ("event_id upper case", record(event_id=OTHER.upper()), Refusal.EVENT_ID),
    ("event_id a number", record(event_id=7), Refusal.EVENT_ID),
    (
        "video_id a path",
        record(video_id="../../secret", object_key="input/../../secret.mp4"),
        Refusal.VIDEO_ID,
    ),
    ("video_id with a newline", record(video_id=f"{VIDEO}\n"), Refusal.VIDEO_ID),
    ("video_id braced", record(video_id=f"{{{VIDEO}}}"), Refusal.VIDEO_ID),
    ("another bucket", record(bucket="secrets"), Refusal.BUCKET),
    ("bucket missing", record(bucket=None), Refusal.BUCKET),
    ("a huge bucket", record(bucket=HUGE), Refusal.BUCKET),
    ("key outside input/", record(object_key=f"output/{VIDEO}.json"), Refusal.OBJECT_KEY),
    ("key climbing out", record(object_key=f"input/../config/{VIDEO}.mp4"), Refusal.OBJECT_KEY),
    ("another video's key", record(object_key=f"input/{OTHER}.mp4"), Refusal.OBJECT_KEY),
    ("key with a slash first", record(object_key=f"/input/{VIDEO}.mp4"), Refusal.OBJECT_KEY),
    ("key missing", record(object_key=None), Refusal.OBJECT_KEY),
    ("negative size", record(size_bytes=-1), Refusal.SIZE),
    ("size as text", record(size_bytes="100"), Refusal.SIZE),
    ("size a fraction", record(size_bytes=1.5), Refusal.SIZE),
    ("size true", record(size_bytes=True), Refusal.SIZE),
    ("sha256 upper case", record(sha256="AB" * 32), Refusal.SHA256),
    ("sha256 missing", record(sha256=None), Refusal.SHA256),
    ("created_at not a time", record(created_at="yesterday"), Refusal.CREATED_AT),
    ("created_at a date", record(created_at="2026-12-01"), Refusal.CREATED_AT),
    ("created_at no offset", record(created_at="2026-12-01T10:00:00"), Refusal.CREATED_AT),
    ("created_at month 13", record(created_at="2026-13-01T10:00:00Z"), Refusal.CREATED_AT),
]


def refused_total(s: Setup) -> float:
    return sum(s.count("checkout_runner_refused_records_total", reason=r.value) for r in Refusal)


@pytest.mark.parametrize(
    ("delivery", "refusal"), [(d, r) for _, d, r in REFUSED], ids=[n for n, _, _ in REFUSED]
)
async def test_a_hostile_record_is_refused_before_any_read_or_write(
    delivery: ConsumedRecord, refusal: Refusal
) -> None:
    s = Setup()
    # Something to read wherever the record may point: none of it is read.
    s.store.objects[INPUT] = fake_video(frames=10)
    s.store.objects[("secrets", f"input/{VIDEO}.mp4")] = fake_video(frames=10)
    s.store.objects[("videos", f"input/{OTHER}.mp4")] = fake_video(frames=10)

    assert await s.handle(delivery) is Handled.INVALID

    assert s.store.reads == []
    assert s.store.puts == []
    assert s.states.records == {}
    assert s.states.history == []
    assert s.count("checkout_runner_refused_records_total", reason=refusal.value) == 1
    assert refused_total(s) == 1
    assert s.count("checkout_runner_videos_total", outcome="invalid") == 1
    assert s.count("checkout_runner_results_written_total") == 0


async def test_the_relays_own_record_passes_the_same_checks() -> None:
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=10)
    assert await s.handle(record()) is Handled.OK
    assert s.store.puts == [OUTPUT]
    assert refused_total(s) == 0


async def test_a_forged_record_with_valid_ids_gets_no_failure_result() -> None:
    """Its event and video ids are fine, its bucket or key is not: a failure result would be
    written where the record says (another bucket) or for an event that may be someone
    else's; nothing is written, and the event (if it is one) stays as it was."""
    s = Setup(buckets=frozenset({"videos", "archive"}))
    for forged in (
        record(bucket="secrets"),
        record(bucket="archive", object_key=f"input/{OTHER}.mp4"),
    ):
        assert await s.handle(forged) is Handled.INVALID
    assert s.store.puts == []
    assert s.states.records == {}
    # The same ids in an allowed bucket (not the default one), its own key: processed.
    s.store.objects[("archive", f"input/{VIDEO}.mp4")] = fake_video(frames=10)
    assert await s.handle(record(bucket="archive")) is Handled.OK
    assert s.store.puts == [("archive", f"output/{VIDEO}.json")]


async def test_the_log_shows_a_bounded_part_of_what_a_record_carried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Setup()
    with caplog.at_level(logging.WARNING, logger="checkout_runner.processor"):
        assert await s.handle(record(bucket=HUGE)) is Handled.INVALID
        assert await s.handle(record(created_at="\u202e" + HUGE)) is Handled.INVALID
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert all(len(line) < 300 for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("record refused (BUCKET_NOT_ALLOWED): bucket 'xxx")
    assert "(1000002 chars)" in lines[0]
    assert lines[1].startswith("record refused (CREATED_AT_INVALID)")
    assert [getattr(r, "reason", None) for r in caplog.records] == [
        "BUCKET_NOT_ALLOWED",
        "CREATED_AT_INVALID",
    ]


async def test_refused_records_are_committed_with_their_batch() -> None:
    """A refused record never blocks its partition: its batch is committed (the honest record
    of the batch processed), and it is not delivered again."""
    s = Setup()
    s.store.objects[INPUT] = fake_video(frames=10)
    hostile = [
        ConsumedRecord(topic="t", partition=0, offset=i, value=d.value, headers=d.headers)
        for i, d in enumerate([record(bucket="secrets"), record(object_key="input/x.mp4")])
    ]
    honest = ConsumedRecord(topic="t", partition=0, offset=2, value=record().value)
    source = FakeSource([[hostile[0], hostile[1]], [honest]])
    stop = asyncio.Event()
    loop = ConsumerLoop(source=source, processor=s.processor, metrics=s.metrics, concurrency=2)
    task = asyncio.create_task(loop.run(stop))
    await asyncio.wait_for(source.drained.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert [[d.offset for d in batch] for batch in source.committed] == [[0, 1], [2]]
    assert s.store.puts == [OUTPUT]
    assert s.count("checkout_runner_refused_records_total", reason="BUCKET_NOT_ALLOWED") == 1
    assert s.count("checkout_runner_refused_records_total", reason="OBJECT_KEY_INVALID") == 1


def test_every_reason_is_counted_from_the_start() -> None:
    """Each reason's series exists at 0 before any refusal (an alert on it needs no data)."""
    s = Setup()
    for refusal in Refusal:
        value = s.metrics.registry.get_sample_value(
            "checkout_runner_refused_records_total", {"reason": refusal.value}
        )
        assert value == 0.0, refusal


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, {"videos"}),
        ({"ALLOWED_BUCKETS": "archive, raw ,"}, {"archive", "raw", "videos"}),
        ({"DEFAULT_BUCKET": "uploads", "ALLOWED_BUCKETS": "archive"}, {"archive", "uploads"}),
    ],
)
def test_the_allowed_buckets_are_the_servers_setting(
    env: dict[str, str], allowed: set[str]
) -> None:
    """ALLOWED_BUCKETS, with DEFAULT_BUCKET always added, as the server reads them
    (test_process_contracts.py compares the two)."""
    assert RunnerSettings.from_env(env).allowed_buckets == allowed


def test_the_docs_name_every_reason() -> None:
    text = RUNNER.read_text()
    for refusal in Refusal:
        assert f"`{refusal.value}`" in text, refusal
