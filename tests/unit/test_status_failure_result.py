"""A failure result (the runner's `"status": "failed"`) makes an event `failed` with the
result's reason, in GetStatus and in listings; anything else at the result key is `ready`."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from checkout_server.domain import ANONYMOUS, EventStatus
from checkout_server.status.service import StatusService
from tests.fakes import NOW, FakeOutbox, FakeStorage, status_service
from tests.helpers import outbox_event

pytestmark = pytest.mark.timeout(10)

VIDEO = "0b6e3f5e-8d4f-4e1a-9a51-8c3c0d9f2b10"
KEY = ("videos", f"output/{VIDEO}.json")


def service(storage: FakeStorage, outbox: FakeOutbox) -> StatusService:
    return status_service(storage, outbox, clock=lambda: NOW + timedelta(minutes=1))


async def stored(result: bytes) -> tuple[FakeStorage, FakeOutbox]:
    storage, outbox = FakeStorage(), FakeOutbox()
    await outbox.add(outbox_event(VIDEO, video_id=VIDEO, status=EventStatus.SENT, at=NOW))
    storage.objects[KEY] = result
    storage.modified[KEY] = NOW + timedelta(seconds=30)
    return storage, outbox


async def test_a_failure_result_makes_the_event_failed_with_its_reason() -> None:
    failure = {
        "status": "failed",
        "error": {"reason": "VIDEO_UNDECODABLE", "message": "InvalidDataError: moov not found"},
    }
    storage, outbox = await stored(json.dumps(failure).encode())

    got = await service(storage, outbox).get(VIDEO, ANONYMOUS)

    assert got.api_status is EventStatus.FAILED
    assert got.error == "VIDEO_UNDECODABLE: InvalidDataError: moov not found"
    recorded = outbox.events[VIDEO]  # recorded once: listings and watches see it too
    assert recorded.api_status is EventStatus.FAILED
    assert recorded.error == got.error
    assert await outbox.status_records().count(status=EventStatus.FAILED, owner=None) == 1
    assert await outbox.status_records().count(status=EventStatus.READY, owner=None) == 0
    result = await service(storage, outbox).result(VIDEO, ANONYMOUS)
    assert result.prediction == failure  # GetResult shows the runner's own words


async def test_a_failure_result_without_an_error_object_still_fails() -> None:
    storage, outbox = await stored(b'{"status": "failed"}')

    got = await service(storage, outbox).get(VIDEO, ANONYMOUS)

    assert got.api_status is EventStatus.FAILED
    assert got.error == "FAILED"


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "ok", "frames": []}',
        b'{"frames": []}',
        b"[1, 2]",
        b"not json",
        b"{" + b" " * 2000,
    ],
    ids=["ok", "no-status", "not-an-object", "not-json", "too-large"],
)
async def test_anything_else_at_the_result_key_is_ready(body: bytes) -> None:
    storage, outbox = await stored(body)

    got = await service(storage, outbox).get(VIDEO, ANONYMOUS)

    assert got.api_status is EventStatus.READY
    assert got.error == ""
