"""An upload whose event insert fails with the database unavailable: the insert may have been
written all the same (its answer lost), so the object is removed only once the database says
the event is not there; written, the upload succeeded; never answered, the object is kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from checkout_server import errors
from checkout_server.domain import OutboxEvent, UploadRequest
from checkout_server.upload import pipeline as pipeline_module
from checkout_server.upload.limits import UploadLimits
from checkout_server.upload.pipeline import UploadPipeline
from tests.fakes import FakeOutbox, FakeStorage
from tests.helpers import MiB, mp4_bytes

pytestmark = pytest.mark.timeout(10)

LIMITS = UploadLimits(
    default_bucket="videos",
    allowed_buckets=frozenset({"videos"}),
    max_bytes=64 * MiB,
    part_bytes=5 * MiB,
)


class LostAnswerOutbox(FakeOutbox):
    """Its insert fails with DATABASE_UNAVAILABLE, after writing the event when `writes`;
    its reads fail too for the first `failing_reads` calls (the database is back after)."""

    def __init__(
        self,
        *,
        writes: bool,
        failing_reads: int = 0,
        error: type[errors.ServiceError] = errors.DatabaseUnavailable,
    ) -> None:
        super().__init__()
        self.error = error
        self.writes = writes
        self.failing_reads = failing_reads
        self.reads = 0

    async def add(self, event: OutboxEvent) -> None:
        if self.writes:
            await super().add(event)
        raise self.error()

    async def get(self, event_id: str) -> OutboxEvent | None:
        self.reads += 1
        if self.reads <= self.failing_reads:
            raise errors.DatabaseUnavailable()
        return await super().get(event_id)


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.parametrize("error", [errors.DatabaseUnavailable, errors.DatabaseTimeout])
async def test_an_insert_written_despite_its_error_is_a_stored_upload(
    error: type[errors.ServiceError],
) -> None:
    storage, outbox = FakeStorage(), LostAnswerOutbox(writes=True, failing_reads=2, error=error)
    pipeline = UploadPipeline(storage=storage, outbox=outbox, limits=LIMITS)
    data = mp4_bytes(3000)

    result = await pipeline.upload(UploadRequest(filename="a.mp4"), one_chunk(data))

    assert outbox.events == {result.event.event_id: result.event}
    assert storage.objects == {("videos", result.event.object_key): data}
    assert outbox.reads == 3  # asked again until the database answered


async def test_an_insert_not_written_removes_the_object() -> None:
    storage, outbox = FakeStorage(), LostAnswerOutbox(writes=False, failing_reads=1)
    pipeline = UploadPipeline(storage=storage, outbox=outbox, limits=LIMITS)

    with pytest.raises(errors.DatabaseUnavailable):
        await pipeline.upload(UploadRequest(filename="a.mp4"), one_chunk(mp4_bytes(3000)))
    await pipeline.drain_cleanups()

    assert outbox.events == {}
    assert storage.objects == {}


async def test_a_database_that_never_answers_keeps_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline_module, "LOST_INSERT_CHECK_S", 0.5)
    storage, outbox = FakeStorage(), LostAnswerOutbox(writes=False, failing_reads=10**6)
    pipeline = UploadPipeline(storage=storage, outbox=outbox, limits=LIMITS)
    data = mp4_bytes(3000)

    with pytest.raises(errors.DatabaseUnavailable):
        await pipeline.upload(UploadRequest(filename="a.mp4"), one_chunk(data))
    await pipeline.drain_cleanups()

    # Whether the event exists is unknown: an object without an event is the safer leftover
    # (an event without its object would reach the detection runners).
    assert list(storage.objects.values()) == [data]
    assert outbox.reads >= 2


async def test_an_upload_cancelled_while_it_asks_for_its_event_keeps_the_object() -> None:
    """Cancelled (by its client) before the database said whether the event was written:
    the object stays, as when the database never answers (the event may exist)."""
    asking = asyncio.Event()

    class Unanswered(LostAnswerOutbox):
        async def get(self, event_id: str) -> OutboxEvent | None:
            asking.set()
            await asyncio.Event().wait()  # the database does not answer (yet)
            raise AssertionError("unreachable")

    storage, outbox = FakeStorage(), Unanswered(writes=True)
    pipeline = UploadPipeline(storage=storage, outbox=outbox, limits=LIMITS)
    data = mp4_bytes(3000)
    upload = asyncio.create_task(pipeline.upload(UploadRequest(filename="a.mp4"), one_chunk(data)))
    await asking.wait()
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    await pipeline.drain_cleanups()
    (event,) = outbox.events.values()
    assert storage.objects == {("videos", event.object_key): data}
