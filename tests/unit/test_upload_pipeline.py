"""The upload pipeline against in-memory fakes: validation, all-or-nothing, idempotency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace

import pytest

from checkout_server import errors
from checkout_server.domain import EventStatus, OutboxEvent, UploadRequest
from checkout_server.upload.limits import UploadLimits
from checkout_server.upload.pipeline import UploadPipeline
from tests.fakes import FakeOutbox, FakeStorage, FakeWriter
from tests.helpers import MiB, RacingOutbox, mp4_bytes, sha256_hex

pytestmark = pytest.mark.timeout(10)

PART = 5 * MiB
LIMITS = UploadLimits(
    default_bucket="videos",
    allowed_buckets=frozenset({"videos", "archive"}),
    max_bytes=64 * MiB,
    part_bytes=PART,
)


def make_pipeline(
    storage: FakeStorage | None = None, outbox: FakeOutbox | None = None
) -> tuple[UploadPipeline, FakeStorage, FakeOutbox]:
    storage = storage or FakeStorage()
    outbox = outbox or FakeOutbox()
    return UploadPipeline(storage=storage, outbox=outbox, limits=LIMITS), storage, outbox


async def chunked(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def from_list(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def assert_nothing_left(storage: FakeStorage, outbox: FakeOutbox) -> None:
    assert storage.objects == {}
    assert outbox.events == {}
    assert all(w.aborted or not w.parts for w in storage.writers)


@pytest.mark.parametrize("size", [100, PART - 1, PART, 2 * PART, 2 * PART + 12345])
async def test_stores_video_then_event(size: int) -> None:
    pipeline, storage, outbox = make_pipeline()
    data = mp4_bytes(size)

    result = await pipeline.upload(UploadRequest(filename="a.mp4"), chunked(data))

    event = result.event
    assert not result.deduplicated
    assert event.event_id == event.video_id
    assert event.object_key == f"input/{event.video_id}.mp4"
    assert event.bucket == "videos"
    assert event.size_bytes == size
    assert event.sha256 == sha256_hex(data)
    assert event.status is EventStatus.NEW
    assert storage.objects[("videos", event.object_key)] == data
    assert outbox.events == {event.event_id: event}


async def test_holds_about_one_part_in_memory() -> None:
    pipeline, storage, _ = make_pipeline()
    chunk = 1 * MiB
    await pipeline.upload(UploadRequest(), chunked(mp4_bytes(6 * PART), chunk))
    # A part is sent as soon as the buffer reaches the part size: at most one chunk over it.
    assert PART <= storage.max_part_bytes < PART + chunk


async def test_declared_size_and_checksum_accepted() -> None:
    pipeline, _, _ = make_pipeline()
    data = mp4_bytes(3 * MiB)
    result = await pipeline.upload(
        UploadRequest(size_bytes=len(data), sha256=sha256_hex(data), bucket="archive"),
        chunked(data),
    )
    assert result.event.bucket == "archive"


@pytest.mark.parametrize(
    ("request_", "data", "error"),
    [
        (UploadRequest(), b"", errors.EmptyFile),
        (UploadRequest(), b"not a video at all, just text " * 100, errors.NotAVideo),
        (UploadRequest(), mp4_bytes(10)[:10], errors.NotAVideo),
        (UploadRequest(bucket="secret"), mp4_bytes(1000), errors.BucketNotAllowed),
        (UploadRequest(filename="a" * 256), mp4_bytes(1000), errors.InvalidFilename),
        (UploadRequest(filename="evil\x00.mp4"), mp4_bytes(1000), errors.InvalidFilename),
        (UploadRequest(filename="line\nbreak.mp4"), mp4_bytes(1000), errors.InvalidFilename),
        (UploadRequest(size_bytes=-1), mp4_bytes(1000), errors.InvalidSize),
        (UploadRequest(size_bytes=999), mp4_bytes(1000), errors.SizeMismatch),
        (UploadRequest(size_bytes=1001), mp4_bytes(1000), errors.SizeMismatch),
        (UploadRequest(size_bytes=65 * MiB), mp4_bytes(1000), errors.FileTooLarge),
        (UploadRequest(sha256="xyz"), mp4_bytes(1000), errors.InvalidChecksum),
        (UploadRequest(sha256="0" * 64), mp4_bytes(1000), errors.ChecksumMismatch),
        (UploadRequest(idempotency_key="has space"), mp4_bytes(1000), errors.InvalidIdempotencyKey),
        (UploadRequest(), mp4_bytes(64 * MiB + 1), errors.FileTooLarge),
        (UploadRequest(size_bytes=12 * MiB), mp4_bytes(12 * MiB - 1), errors.SizeMismatch),
        (UploadRequest(sha256="0" * 64), mp4_bytes(12 * MiB), errors.ChecksumMismatch),
    ],
)
async def test_bad_input_leaves_nothing(
    request_: UploadRequest, data: bytes, error: type[errors.ServiceError]
) -> None:
    pipeline, storage, outbox = make_pipeline()
    with pytest.raises(error) as caught:
        await pipeline.upload(request_, chunked(data, 1 * MiB))
    assert caught.value.code.name in {"INVALID_ARGUMENT", "FAILED_PRECONDITION"}
    assert caught.value.text  # a Russian message for people
    assert_nothing_left(storage, outbox)


async def test_too_large_stops_reading_at_the_limit() -> None:
    pipeline, storage, outbox = make_pipeline()
    consumed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal consumed
        yield mp4_bytes(1 * MiB)
        while True:
            consumed += 1
            yield b"\0" * MiB

    with pytest.raises(errors.FileTooLarge):
        await pipeline.upload(UploadRequest(), endless())
    assert consumed == 64  # stopped at the first chunk over 64 MiB
    assert_nothing_left(storage, outbox)


async def test_storage_failure_mid_stream_aborts() -> None:
    storage = FakeStorage(fail_after_parts=1)
    pipeline, storage, outbox = make_pipeline(storage=storage)
    with pytest.raises(errors.StorageUnavailable):
        await pipeline.upload(UploadRequest(), chunked(mp4_bytes(4 * PART)))
    assert storage.writers[0].aborted
    assert_nothing_left(storage, outbox)


async def test_a_cleanup_that_outlives_shutdown_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = FakeStorage(fail_after_parts=1)
    pipeline = UploadPipeline(
        storage=storage, outbox=FakeOutbox(), limits=LIMITS, cleanup_wait_s=0.01
    )
    aborting, cancelled = asyncio.Event(), asyncio.Event()

    async def hangs(self: object) -> None:  # storage unreachable: the abort keeps retrying
        aborting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr(FakeWriter, "abort", hangs)
    with pytest.raises(errors.StorageUnavailable):  # the client is answered at once
        await pipeline.upload(UploadRequest(), chunked(mp4_bytes(4 * PART)))
    await asyncio.wait_for(aborting.wait(), 5)

    await pipeline.drain_cleanups(timeout_s=0.01)

    # It must not run on after the storage client is closed (it would open a new session).
    assert cancelled.is_set()


async def test_database_failure_removes_the_object() -> None:
    pipeline, storage, outbox = make_pipeline(outbox=FakeOutbox(down=True))
    with pytest.raises(errors.DatabaseUnavailable):
        await pipeline.upload(UploadRequest(), chunked(mp4_bytes(2 * PART)))
    assert_nothing_left(storage, outbox)


async def test_cancellation_mid_stream_aborts() -> None:
    pipeline, storage, outbox = make_pipeline()
    second_part_reached = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in chunked(mp4_bytes(PART + MiB)):
            yield chunk
        second_part_reached.set()
        await asyncio.Event().wait()  # the client goes quiet
        yield b""

    task = asyncio.create_task(pipeline.upload(UploadRequest(), stalls()))
    await second_part_reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pipeline.drain_cleanups()
    assert storage.writers[0].parts  # a part had been written...
    assert storage.writers[0].aborted  # ...and was aborted
    assert_nothing_left(storage, outbox)


async def test_an_interrupted_upload_is_answered_shutting_down_and_leaves_nothing() -> None:
    """The end of a stop's grace period: the uploads still streaming are stopped with a
    retriable SHUTTING_DOWN, their objects aborted; a client's own cancel stays a cancel."""
    pipeline, storage, outbox = make_pipeline()
    streaming = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in chunked(mp4_bytes(PART + MiB)):
            yield chunk
        streaming.set()
        await asyncio.Event().wait()
        yield b""

    interrupted = asyncio.create_task(pipeline.upload(UploadRequest(), stalls()))
    await streaming.wait()
    streaming.clear()
    cancelled = asyncio.create_task(pipeline.upload(UploadRequest(), stalls()))
    await streaming.wait()
    cancelled.cancel()  # by its client, before the stop: not answered by the server
    with pytest.raises(asyncio.CancelledError):
        await cancelled

    assert pipeline.interrupt() == 1
    with pytest.raises(errors.ShuttingDown) as caught:
        await interrupted
    assert caught.value.retriable
    with pytest.raises(errors.ShuttingDown):  # and none starts after it
        await pipeline.upload(UploadRequest(), chunked(mp4_bytes(1000)))
    await pipeline.drain_cleanups()
    assert pipeline.in_flight == 0
    assert all(w.aborted for w in storage.writers)
    assert_nothing_left(storage, outbox)


async def test_an_upload_interrupted_while_its_event_is_written_is_answered_with_it() -> None:
    adding, proceed = asyncio.Event(), asyncio.Event()

    class SlowOutbox(FakeOutbox):
        async def add(self, event: OutboxEvent) -> None:
            adding.set()
            await proceed.wait()
            await super().add(event)

    pipeline, storage, outbox = make_pipeline(outbox=SlowOutbox())
    data = mp4_bytes(1000)
    upload = asyncio.create_task(pipeline.upload(UploadRequest(), chunked(data)))
    await adding.wait()
    assert pipeline.interrupt() == 1
    proceed.set()  # the insert, the commit point, completes after the interrupt
    result = await upload
    assert outbox.events == {result.event.event_id: result.event}
    assert storage.objects[("videos", result.event.object_key)] == data


async def test_idempotent_retry_returns_first_result() -> None:
    pipeline, storage, outbox = make_pipeline()
    data = mp4_bytes(2 * MiB)
    first = await pipeline.upload(UploadRequest(idempotency_key="k-1"), chunked(data))

    again = await pipeline.upload(
        UploadRequest(idempotency_key="k-1", sha256=sha256_hex(data)), chunked(data)
    )

    assert again.deduplicated
    assert again.event == first.event
    assert len(outbox.events) == 1
    assert len(storage.objects) == 1


async def test_idempotency_key_reused_for_another_file() -> None:
    pipeline, _, outbox = make_pipeline()
    await pipeline.upload(UploadRequest(idempotency_key="k-2"), chunked(mp4_bytes(1000)))
    other = mp4_bytes(2000, seed=7)
    with pytest.raises(errors.IdempotencyKeyReused):
        await pipeline.upload(
            UploadRequest(idempotency_key="k-2", sha256=sha256_hex(other)), chunked(other)
        )
    assert len(outbox.events) == 1


async def test_concurrent_uploads_with_one_key_keep_one() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    racing = RacingOutbox(outbox, 2)  # both miss each other in the look-up
    pipeline = UploadPipeline(storage=storage, outbox=racing, limits=LIMITS)
    data = mp4_bytes(3 * MiB)
    results = await asyncio.gather(
        *(pipeline.upload(UploadRequest(idempotency_key="same"), chunked(data)) for _ in range(2))
    )
    assert (racing.added, racing.duplicates) == (1, 1)  # the unique index decided
    assert {r.event.event_id for r in results} == set(outbox.events)
    assert sorted(r.deduplicated for r in results) == [False, True]
    await pipeline.drain_cleanups()
    assert len(storage.objects) == 1
    assert sum(w.aborted for w in storage.writers) == 1


async def test_one_key_used_at_once_for_another_file_is_refused() -> None:
    # Neither upload declares its size or hash: the loser's bytes, known by now, decide.
    storage, outbox = FakeStorage(), FakeOutbox()
    racing = RacingOutbox(outbox, 2)
    pipeline = UploadPipeline(storage=storage, outbox=racing, limits=LIMITS)
    files = [mp4_bytes(3 * MiB, seed=1), mp4_bytes(3 * MiB, seed=2)]
    outcomes = await asyncio.gather(
        *(pipeline.upload(UploadRequest(idempotency_key="k"), chunked(f)) for f in files),
        return_exceptions=True,
    )
    assert (racing.added, racing.duplicates) == (1, 1)
    assert sum(isinstance(o, errors.IdempotencyKeyReused) for o in outcomes) == 1
    (won,) = [o for o in outcomes if not isinstance(o, BaseException)]
    assert not won.deduplicated
    await pipeline.drain_cleanups()
    assert list(outbox.events) == [won.event.event_id]
    assert len(storage.objects) == 1


async def test_uploads_hold_memory_as_they_buffer_and_wait_for_more() -> None:
    storage, outbox = FakeStorage(), FakeOutbox()
    limits = replace(LIMITS, memory_budget_bytes=2 * PART)
    pipeline = UploadPipeline(storage=storage, outbox=outbox, limits=limits)
    gates = [asyncio.Event() for _ in range(2)]

    async def holding(i: int) -> AsyncIterator[bytes]:
        """Less than a part, all buffered, then the stream waits for its gate to end."""
        async for chunk in chunked(mp4_bytes(PART - MiB, seed=i)):
            yield chunk
        await gates[i].wait()

    holders = [asyncio.create_task(pipeline.upload(UploadRequest(), holding(i))) for i in (0, 1)]
    await let_others_run()
    assert pipeline.memory.used_bytes == 2 * PART - 2 * MiB  # what they buffer, no more
    pulled = CountedChunks(PART + MiB)
    third = asyncio.create_task(pipeline.upload(UploadRequest(), pulled.__aiter__()))
    await let_others_run()
    # Its first two chunks fit; the third waits for its granule, and nothing more is read.
    assert pipeline.memory.used_bytes == 2 * PART
    assert pulled.pulled == 3
    assert not third.done()

    gates[0].set()  # the first ends: its memory comes back, the third goes on
    await holders[0]
    await third
    gates[1].set()
    await holders[1]
    assert pipeline.memory.used_bytes == 0
    assert len(outbox.events) == 3


async def test_memory_is_returned_when_an_upload_fails() -> None:
    pipeline, _, _ = make_pipeline()
    with pytest.raises(errors.NotAVideo):
        await pipeline.upload(UploadRequest(), chunked(b"garbage" * 100))
    assert pipeline.memory.used_bytes == 0


class CountedChunks:
    """A client stream of `size` bytes in 1 MiB chunks that counts the chunks pulled from it
    and sets `reached` once `until` have been pulled; with `stall`, it then goes quiet."""

    def __init__(self, size: int, *, until: int = 0, stall: bool = False) -> None:
        self.data = mp4_bytes(size)
        self.pulled = 0
        self.until = until
        self.stall = stall
        self.reached = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in chunked(self.data, MiB):
            await asyncio.sleep(0)  # as a network stream does, let other tasks run
            self.pulled += 1
            if self.pulled == self.until:
                self.reached.set()
            yield chunk
        if self.stall:
            self.reached.set()
            await asyncio.Event().wait()


async def let_others_run() -> None:
    """Give every runnable task its turn (not a timed wait: nothing else is pending)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_collects_the_next_part_while_one_is_stored_and_no_further() -> None:
    storage = FakeStorage(part_gate=asyncio.Event())
    pipeline, storage, outbox = make_pipeline(storage=storage)
    per_part = PART // MiB
    stream = CountedChunks(4 * PART, until=2 * per_part)
    task = asyncio.create_task(pipeline.upload(UploadRequest(), stream.__aiter__()))

    # The first part is in flight (held at the gate) while the second is read...
    await asyncio.wait_for(stream.reached.wait(), 5)
    await let_others_run()
    assert storage.parts_waiting == 1
    # ...and reading stops there: two parts in memory at most, the budget's reservation.
    assert stream.pulled == 2 * per_part

    assert storage.part_gate is not None
    storage.part_gate.set()
    result = await task
    assert storage.objects[("videos", result.event.object_key)] == stream.data
    assert result.event.sha256 == sha256_hex(stream.data)
    assert len(outbox.events) == 1


async def test_cancel_stops_the_part_in_flight_before_abort() -> None:
    storage = FakeStorage(part_gate=asyncio.Event())  # the store never answers
    pipeline, storage, outbox = make_pipeline(storage=storage)
    stream = CountedChunks(PART + MiB, stall=True)
    task = asyncio.create_task(pipeline.upload(UploadRequest(), stream.__aiter__()))
    await asyncio.wait_for(stream.reached.wait(), 5)
    await let_others_run()
    assert storage.parts_waiting == 1

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pipeline.drain_cleanups()

    # FakeWriter.abort asserts that no write_part still runs: abort came after it stopped.
    assert storage.writers[0].aborted
    assert not storage.writers[0].writing
    assert_nothing_left(storage, outbox)


async def test_a_part_failing_in_flight_stops_reading_at_once() -> None:
    storage = FakeStorage(fail_after_parts=0)
    pipeline, storage, outbox = make_pipeline(storage=storage)
    stream = CountedChunks(6 * PART)
    with pytest.raises(errors.StorageUnavailable):
        await pipeline.upload(UploadRequest(), stream.__aiter__())
    # The first part failed while the second was collected: reading stopped at the next chunk.
    assert stream.pulled <= PART // MiB + 2
    assert storage.writers[0].aborted
    assert_nothing_left(storage, outbox)


async def test_a_video_of_one_part_is_written_once_after_its_hash_is_checked() -> None:
    pipeline, storage, _ = make_pipeline()
    data = mp4_bytes(PART - 1)
    result = await pipeline.upload(UploadRequest(sha256=sha256_hex(data)), chunked(data))
    writer = storage.writers[0]
    assert writer.parts == [data]  # no write_part: finish alone, one request to the store
    assert writer.finished
    assert storage.objects[("videos", result.event.object_key)] == data


@pytest.mark.parametrize("size", [7_800, PART - 1])
async def test_a_bad_hash_of_one_part_reaches_no_store(size: int) -> None:
    pipeline, storage, outbox = make_pipeline()
    with pytest.raises(errors.ChecksumMismatch):
        await pipeline.upload(UploadRequest(sha256="0" * 64), chunked(mp4_bytes(size)))
    writer = storage.writers[0]
    assert writer.parts == []  # nothing was sent at all, so nothing could become visible
    assert not writer.finished
    assert_nothing_left(storage, outbox)
