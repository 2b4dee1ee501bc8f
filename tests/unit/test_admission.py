"""The uploads' admission on its own: concurrency (per process and per client), rate, open
sessions, memory, pace and interrupts, shared by UploadVideo streams and resumable writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from checkout_server import errors
from checkout_server.upload.admission import Admission
from checkout_server.upload.limits import UploadLimits
from checkout_server.upload.pacing import Pace, paced
from tests.fakes import FakeRateLimit

pytestmark = pytest.mark.timeout(10)

LIMITS = UploadLimits(
    default_bucket="videos",
    allowed_buckets=frozenset({"videos"}),
    max_bytes=1000,
    part_bytes=100,
    memory_budget_bytes=1000,
    max_concurrent=2,
)


async def test_uploads_beyond_the_limit_are_refused_and_counted() -> None:
    admission = Admission(LIMITS)
    async with admission.upload("a"), admission.upload("b"):
        assert admission.uploads_in_flight == 2
        with pytest.raises(errors.TooManyUploads):
            async with admission.upload("c"):
                pass
    assert admission.uploads_in_flight == 0
    assert admission.refusals == {"TOO_MANY_UPLOADS": 1}


async def test_uploads_and_writes_share_the_limit_and_refused_writes_are_counted() -> None:
    # Changed on purpose: an UploadVideo used to be admitted while writes filled
    # UPLOAD_MAX_CONCURRENT (so the process ran up to twice as many streams, each with its
    # two parts), and a refused write was not counted. Both kinds hold the same slot and
    # memory, so they share the one limit, and every refusal shows in the metrics.
    admission = Admission(LIMITS)
    async with admission.upload("a"), admission.write("b"):
        with pytest.raises(errors.TooManyUploads):
            async with admission.write("c"):
                pass
        with pytest.raises(errors.TooManyUploads):
            async with admission.upload("d"):
                pass
        assert (admission.uploads_in_flight, admission.writes_in_flight) == (1, 1)
    assert admission.refusals == {"TOO_MANY_UPLOADS": 2}
    assert (admission.uploads_in_flight, admission.writes_in_flight) == (0, 0)


async def test_one_client_may_run_only_its_share_of_streams() -> None:
    admission = Admission(replace(LIMITS, max_concurrent=10, max_concurrent_per_client=2))
    async with admission.upload("cam"), admission.write("cam"):
        assert admission.streams_of("cam") == 2
        with pytest.raises(errors.TooManyClientUploads) as refused:
            async with admission.write("cam"):
                pass
        assert refused.value.retry_after_s is not None
        assert refused.value.retriable
        async with admission.upload("other"):  # another client is not held back
            assert admission.streams_of("other") == 1
    assert (admission.streams_of("cam"), admission.streams_of("other")) == (0, 0)
    assert admission.refusals == {"TOO_MANY_CLIENT_UPLOADS": 1}


def test_open_sessions_beyond_the_limit_are_refused() -> None:
    admission = Admission(replace(LIMITS, max_open_sessions_per_client=3))
    admission.admit_session(2)
    with pytest.raises(errors.TooManyUploadSessions) as refused:
        admission.admit_session(3)
    assert refused.value.retry_after_s
    Admission(LIMITS).admit_session(1000)  # 0: no limit
    assert admission.refusals == {"TOO_MANY_UPLOAD_SESSIONS": 1}


async def test_a_clients_rate_is_counted_for_uploads_and_asked_for_sessions() -> None:
    admission = Admission(LIMITS, rate_limit=FakeRateLimit(allowed=1))
    async with admission.upload("cam", owner="cam"):
        pass
    with pytest.raises(errors.UploadRateLimited):
        async with admission.upload("cam", owner="cam"):
            pass
    async with admission.upload("peer 10.0.0.7"):  # no owner (authentication off)
        pass
    with pytest.raises(errors.UploadRateLimited):
        await admission.admit_client("cam")
    await admission.admit_client("")  # no owner (authentication off): not limited
    # Kept on purpose: a session's writes are not counted against the rate; its start was,
    # and a client on a link that keeps breaking must be able to resume as often as it
    # breaks. Its writes are held by the limits per client and by the pace instead.
    async with admission.write("cam"):
        pass
    assert admission.rate_limited_total == 2
    assert admission.uploads_in_flight == 0


async def test_a_stream_holds_what_it_buffers_in_granules_and_gives_back_what_is_stored() -> None:
    admission = Admission(LIMITS)  # parts of 100: granules of 100
    async with admission.buffers(part_bytes=100) as memory:
        assert admission.memory.used_bytes == 0  # nothing before its first byte
        await memory.hold(4)  # a stalled stream's first chunk: one granule, not two parts
        assert admission.memory.used_bytes == 100
        await memory.hold(96)
        assert admission.memory.used_bytes == 100
        await memory.hold(150)
        assert admission.memory.used_bytes == 300
        await memory.free(100)  # a part stored
        assert admission.memory.used_bytes == 200  # 150 buffered: two granules
        async with admission.buffers(part_bytes=100) as other:
            await other.hold(30)
            assert admission.memory.used_bytes == 300
    assert admission.memory.used_bytes == 0  # each gives back all when it ends


async def test_a_stream_that_alone_needs_more_than_the_budget_gets_all_of_it() -> None:
    admission = Admission(replace(LIMITS, memory_wait_s=0.05))
    async with admission.buffers(part_bytes=100) as memory:
        await memory.hold(1500)
        assert admission.memory.used_bytes == 1000
        await memory.free(1500)
    assert admission.memory.used_bytes == 0


async def test_growing_waits_for_the_budget() -> None:
    admission = Admission(LIMITS)
    async with (
        admission.buffers(part_bytes=100) as first,
        admission.buffers(part_bytes=100) as second,
    ):
        await first.hold(900)
        growing = asyncio.create_task(second.hold(200))
        await asyncio.sleep(0.01)
        assert not growing.done()  # 900 + 200 is over the budget of 1000
        await first.free(400)
        await growing
        assert admission.memory.used_bytes == 700
    assert admission.memory.used_bytes == 0


async def test_growing_waits_a_bounded_time_then_the_stream_is_refused() -> None:
    admission = Admission(replace(LIMITS, memory_wait_s=0.05))
    async with admission.buffers(part_bytes=100) as first:
        await first.hold(850)  # nine granules
        async with admission.buffers(part_bytes=100) as second:
            await second.hold(50)  # its first granule fits
            with pytest.raises(errors.UploadMemoryBusy) as refused:
                await second.hold(60)  # the second does not
            assert admission.memory.used_bytes == 1000  # the refused bytes got nothing
        assert admission.memory.used_bytes == 900  # the refused stream gave back its granule
    assert refused.value.retry_after_s
    assert refused.value.retriable
    assert admission.memory.used_bytes == 0
    assert admission.refusals == {"UPLOAD_MEMORY_BUSY": 1}


async def test_an_interrupt_cancels_both_kinds_and_refuses_new_ones() -> None:
    admission = Admission(LIMITS)
    seen: list[bool] = []
    running = {"upload": asyncio.Event(), "write": asyncio.Event()}

    async def stream(kind: str) -> None:
        enter = admission.upload if kind == "upload" else admission.write
        async with enter("cam") as admitted_stream:
            try:
                running[kind].set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append(admitted_stream.interrupted())
                raise

    tasks = [asyncio.create_task(stream("upload")), asyncio.create_task(stream("write"))]
    await asyncio.gather(*(event.wait() for event in running.values()))
    assert admission.interrupt() == 2
    await asyncio.gather(*tasks, return_exceptions=True)
    assert seen == [True, True]
    with pytest.raises(errors.ShuttingDown):
        async with admission.upload("cam"):
            pass
    assert (admission.uploads_in_flight, admission.writes_in_flight) == (0, 0)


async def test_a_cancel_of_its_own_is_not_the_interrupts() -> None:
    admission = Admission(LIMITS)
    seen: list[bool] = []

    async def stream() -> None:
        async with admission.upload("cam") as admitted_stream:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append(admitted_stream.interrupted())
                raise

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen == [False]


# --- Pace ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def client_sending(clock: FakeClock, gaps_s: list[float], size: int) -> AsyncIterator[bytes]:
    """A client that sends `size` bytes after each of `gaps_s` (on the fake clock)."""

    async def send() -> AsyncIterator[bytes]:
        for gap in gaps_s:
            clock.now += gap
            yield b"x" * size

    return send()


async def read_all(items: AsyncIterator[bytes], clock: FakeClock, busy_s: float = 0) -> int:
    """Read everything, the server busy `busy_s` (on the fake clock) after each item."""
    received = 0
    async for item in items:
        received += len(item)
        clock.now += busy_s
    return received


PACE = Pace(idle_timeout_s=5.0, min_bytes_per_s=100, window_s=10.0)


async def test_a_stream_below_the_minimum_over_a_window_is_stalled() -> None:
    clock = FakeClock()
    stalls: list[bool] = []
    slow = client_sending(clock, [1.0] * 30, size=50)  # 50 B/s, under 100 B/s
    items = paced(slow, PACE, size=len, on_stall=lambda: stalls.append(True), clock=clock)
    with pytest.raises(errors.UploadStalled) as stalled:
        await read_all(items, clock)
    assert clock.now == 10.0  # judged as the first window ends
    assert stalled.value.metadata == {"min_bytes_per_s": "100"}
    assert stalls == [True]


async def test_a_stream_at_the_minimum_passes_and_the_servers_own_time_is_not_counted() -> None:
    clock = FakeClock()
    steady = client_sending(clock, [1.0] * 30, size=100)  # 100 B/s
    assert await read_all(paced(steady, PACE, size=len, clock=clock), clock) == 3000
    # The server busy 9 s after each chunk: 100 B in 10 s of wall time, but 1 s of waiting.
    clock = FakeClock()
    waited = client_sending(clock, [1.0] * 30, size=100)
    received = await read_all(paced(waited, PACE, size=len, clock=clock), clock, busy_s=9.0)
    assert received == 3000


async def test_a_burst_then_a_trickle_is_judged_window_by_window() -> None:
    clock = FakeClock()
    burst = client_sending(clock, [0.1] + [1.0] * 30, size=0)
    first = paced(burst, PACE, size=lambda _: 5000, clock=clock)  # one big window
    assert await read_all(first, clock) == 0
    clock = FakeClock()
    gaps = [1.0] * 10 + [4.0] * 10  # 100 B/s for a window, then 25 B/s
    trickle = client_sending(clock, gaps, size=100)
    with pytest.raises(errors.UploadStalled):
        await read_all(paced(trickle, PACE, size=len, clock=clock), clock)
    assert clock.now == 22.0  # the second window (10 s of waiting) ended at 22 s


async def test_a_stream_that_sends_nothing_is_stalled_after_the_idle_timeout() -> None:
    admission = Admission(replace(LIMITS, idle_timeout_s=0.05))

    async def silent() -> AsyncIterator[bytes]:
        yield b"metadata"
        await asyncio.Event().wait()  # then nothing, as a stalled client
        yield b""

    items = admission.paced(silent(), size=len)
    assert await anext(items) == b"metadata"
    with pytest.raises(errors.UploadStalled) as stalled:
        await anext(items)
    assert stalled.value.metadata == {"idle_timeout_s": "0.05"}
    assert admission.refusals == {"UPLOAD_STALLED": 1}


async def test_without_limits_a_stream_is_passed_through() -> None:
    admission = Admission(LIMITS)  # no idle timeout, no minimum
    items = client_sending(FakeClock(), [1.0], size=1)
    assert admission.paced(items, size=len) is items
