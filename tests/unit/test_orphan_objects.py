"""The sweep of complete objects without an event (upload/sweeper.EventlessObjects), with the
fakes: which objects it removes, which it keeps, and how it pages through a bucket."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from checkout_server.config import ServerSettings, upload_commit_gap_s
from checkout_server.domain import EventStatus, OutboxEvent
from checkout_server.errors import ConfigError, DatabaseUnavailable
from checkout_server.ports import UploadSession
from checkout_server.upload import pipeline as pipeline_module
from checkout_server.upload import sweeper as sweeper_module
from checkout_server.upload.sweeper import NAMED_TTL_S, EventlessObjects, video_id_of
from tests.fakes import NOW, FakeOutbox, FakeStorage, FakeUploadSessions

BUCKET = "videos"
AGE_S = 3600.0
LATER = NOW + timedelta(seconds=AGE_S + 1)  # the sweep's clock: objects at NOW are old


def key(video_id: str) -> str:
    return f"input/{video_id}.mp4"


def event(video_id: str, *, event_id: str = "") -> OutboxEvent:
    return OutboxEvent(
        event_id=event_id or video_id,
        video_id=video_id,
        bucket=BUCKET,
        object_key=key(video_id),
        filename="f.mp4",
        content_type="video/mp4",
        size_bytes=3,
        sha256="",
        status=EventStatus.NEW,
        created_at=NOW,
        updated_at=NOW,
    )


def session(video_id: str) -> UploadSession:
    return UploadSession(
        upload_id=f"upload-{video_id}",
        video_id=video_id,
        bucket=BUCKET,
        object_key=key(video_id),
        filename="f.mp4",
        size_bytes=3,
        sha256="",
        crc32c=None,
        idempotency_key="",
        owner="",
        part_bytes=5 * 1024 * 1024,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=12),
    )


class World:
    def __init__(self, *, page: int = 1000) -> None:
        self.storage = FakeStorage()
        self.outbox = FakeOutbox()
        self.sessions = FakeUploadSessions()
        self.now = LATER
        self.sweep = EventlessObjects(
            storage=self.storage,
            outbox=self.outbox,
            sessions=self.sessions,
            min_age_s=AGE_S,
            page=page,
            clock=lambda: self.now,
        )

    def put(self, name: str, *, age_s: float = AGE_S + 1, bucket: str = BUCKET) -> str:
        """An object `name` (a video id, or a whole key with a '/') of that age at `now`."""
        object_key = name if "/" in name else key(name)
        self.storage.objects[(bucket, object_key)] = b"abc"
        self.storage.modified[(bucket, object_key)] = self.now - timedelta(seconds=age_s)
        return object_key

    def keys(self, bucket: str = BUCKET) -> list[str]:
        return sorted(k for b, k in self.storage.objects if b == bucket)

    def count_questions(self) -> list[list[str]]:
        """From now on, every question to the outbox (its video ids) is kept in the list."""
        asked: list[list[str]] = []
        ask = self.outbox.videos_with_events

        async def counting(video_ids: list[str]) -> set[str]:
            asked.append(list(video_ids))
            return await ask(video_ids)

        self.outbox.videos_with_events = counting  # type: ignore[method-assign,assignment]
        return asked


async def test_an_old_object_no_event_names_is_removed_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    orphan = world.put("v-orphan")
    with caplog.at_level(logging.WARNING, logger="checkout_server.upload.sweeper"):
        await world.sweep.sweep(BUCKET)
    assert world.keys() == []
    assert world.sweep.removed_total == 1
    [record] = [r for r in caplog.records if r.getMessage().startswith("removed a complete")]
    assert (record.key, record.size_bytes, record.age_s) == (orphan, 3, AGE_S + 1)  # type: ignore[attr-defined]


async def test_an_object_younger_than_the_age_is_kept() -> None:
    world = World()
    young = world.put("v-young", age_s=AGE_S - 1)
    await world.sweep.sweep(BUCKET)
    assert world.keys() == [young]
    assert world.sweep.removed_total == 0


async def test_an_object_of_the_exact_age_is_removed() -> None:
    world = World()
    world.put("v-edge", age_s=AGE_S)
    await world.sweep.sweep(BUCKET)
    assert world.keys() == []


async def test_an_object_with_its_uploads_event_or_a_re_requests_event_is_kept() -> None:
    world = World()
    uploaded = world.put("v-uploaded")
    re_requested = world.put("v-re-requested")
    world.outbox.events["v-uploaded"] = event("v-uploaded")
    # Only a re-request's event names this video (its upload's was removed): still kept.
    world.outbox.events["e-other"] = event("v-re-requested", event_id="e-other")
    orphan = world.put("v-orphan")
    await world.sweep.sweep(BUCKET)
    assert world.keys() == sorted([uploaded, re_requested])
    assert (BUCKET, orphan) not in world.storage.objects


async def test_an_object_a_resumable_session_names_is_kept_however_old() -> None:
    """A session killed after its completion: its client's next call (or its expiry) writes
    the event, which needs the object."""
    world = World()
    finishing = world.put("v-session", age_s=10 * AGE_S)
    await world.sessions.create(session("v-session"))
    await world.sweep.sweep(BUCKET)
    assert world.keys() == [finishing]


async def test_when_the_database_does_not_answer_everything_is_kept_and_the_page_retried() -> None:
    world = World(page=2)
    names = [world.put(f"v-{i}") for i in range(3)]
    world.outbox.down = True
    with pytest.raises(DatabaseUnavailable):
        await world.sweep.sweep(BUCKET)
    assert world.keys() == names
    world.outbox.down = False
    await world.sweep.sweep(BUCKET)
    # The same first page again (not the one after it), now decided.
    assert world.storage.list_calls == [(BUCKET, ""), (BUCKET, "")]
    assert world.keys() == [names[2]]


async def test_keys_that_are_not_an_uploads_are_left_alone() -> None:
    world = World()
    others = [world.put("input/notes.txt"), world.put("input/sub/v.mp4"), world.put("input/.mp4")]
    await world.sweep.sweep(BUCKET)
    assert world.keys() == sorted(others)
    assert [video_id_of(k) for k in others] == [None, None, None]
    assert video_id_of("input/abc.mp4") == "abc"


async def test_each_round_lists_one_page_after_the_last_and_wraps_around_at_the_end() -> None:
    world = World(page=2)
    for i in range(5):
        world.put(f"v-{i}", age_s=1)  # all young: nothing removed, only the paging seen
    for _ in range(5):
        await world.sweep.sweep(BUCKET)
    assert world.storage.list_calls == [
        (BUCKET, ""),
        (BUCKET, key("v-1")),
        (BUCKET, key("v-3")),  # a short page: the end, so the next round starts over
        (BUCKET, ""),
        (BUCKET, key("v-1")),
    ]
    assert len(world.keys()) == 5


async def test_a_page_full_at_the_end_of_the_bucket_wraps_after_an_empty_one() -> None:
    world = World(page=2)
    world.put("v-0", age_s=1)
    world.put("v-1", age_s=1)
    for _ in range(3):
        await world.sweep.sweep(BUCKET)
    assert world.storage.list_calls == [(BUCKET, ""), (BUCKET, key("v-1")), (BUCKET, "")]


async def test_buckets_are_paged_apart() -> None:
    world = World(page=1)
    world.put("v-a", age_s=1)
    world.put("v-b", age_s=1)
    world.put("v-c", age_s=1, bucket="other")
    await world.sweep.sweep(BUCKET)
    await world.sweep.sweep("other")
    await world.sweep.sweep(BUCKET)
    assert world.storage.list_calls == [(BUCKET, ""), ("other", ""), (BUCKET, key("v-a"))]


async def test_the_outbox_is_asked_once_per_page_for_the_old_objects_only() -> None:
    world = World()
    asked = world.count_questions()
    world.put("v-young", age_s=1)
    for i in range(3):
        world.put(f"v-old-{i}")
    await world.sweep.sweep(BUCKET)
    assert asked == [["v-old-0", "v-old-1", "v-old-2"]]
    world.storage.objects.clear()
    world.put("v-young-2", age_s=1)
    await world.sweep.sweep(BUCKET)
    assert len(asked) == 1  # nothing old: no question


async def test_a_video_found_with_an_event_is_asked_about_again_only_after_a_day() -> None:
    """Once a video has an event only Cleanup removes it, with its object first; one whose
    object survived (a failed delete) goes at the first question after NAMED_TTL_S."""
    world = World()
    asked = world.count_questions()
    kept = world.put("v-a")
    world.outbox.events["v-a"] = event("v-a")
    await world.sweep.sweep(BUCKET)
    await world.sweep.sweep(BUCKET)
    assert asked == [["v-a"]]
    del world.outbox.events["v-a"]  # Cleanup removed its event but not its object
    world.now += timedelta(seconds=NAMED_TTL_S - 1)
    await world.sweep.sweep(BUCKET)
    assert world.keys() == [kept]
    world.now += timedelta(seconds=1)
    await world.sweep.sweep(BUCKET)
    assert asked == [["v-a"], ["v-a"]]
    assert world.keys() == []


async def test_beyond_the_most_remembered_every_video_is_asked_about_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweeper_module, "NAMED_MAX", 2)
    world = World()
    asked = world.count_questions()
    for name in ("v-a", "v-b"):
        world.put(name)
        world.outbox.events[name] = event(name)
    await world.sweep.sweep(BUCKET)
    world.put("v-c")
    world.outbox.events["v-c"] = event("v-c")
    await world.sweep.sweep(BUCKET)  # a third would be one too many: all are forgotten
    await world.sweep.sweep(BUCKET)
    assert asked == [["v-a", "v-b"], ["v-c"], ["v-a", "v-b"]]
    assert len(world.keys()) == 3


def test_the_orphan_age_must_exceed_the_longest_gap_from_object_to_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ServerSettings()
    assert settings.upload_orphan_object_age_s == 3600.0
    # 2 attempts x (5 s selection + 10 s answer) per call, three calls, and the 30 s check.
    assert upload_commit_gap_s(5_000) == 3 * 2 * 15 + pipeline_module.LOST_INSERT_CHECK_S
    assert ServerSettings(upload_orphan_object_age_s=130).upload_orphan_object_age_s == 130
    with pytest.raises(ConfigError, match="UPLOAD_ORPHAN_OBJECT_AGE_S must be at least 130 s"):
        ServerSettings(upload_orphan_object_age_s=129)
    # Longer database timeouts raise the floor; a shorter lost-insert check lowers it.
    with pytest.raises(ConfigError, match="UPLOAD_ORPHAN_OBJECT_AGE_S"):
        ServerSettings(upload_orphan_object_age_s=130, mongo_timeout_ms=6_000)
    monkeypatch.setattr(pipeline_module, "LOST_INSERT_CHECK_S", 1.0)
    assert ServerSettings(upload_orphan_object_age_s=101).upload_orphan_object_age_s == 101
