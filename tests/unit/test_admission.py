"""The uploads' admission on its own: concurrency, rate, memory and interrupts, shared by
UploadVideo streams and resumable writes."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from checkout_server import errors
from checkout_server.upload.admission import Admission
from checkout_server.upload.limits import UploadLimits
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
    assert (admission.uploads_in_flight, admission.refused_total) == (0, 1)


async def test_writes_count_uploads_too_uploads_do_not_count_writes() -> None:
    admission = Admission(LIMITS)
    async with admission.upload("a"), admission.write("b"):
        with pytest.raises(errors.TooManyUploads):
            async with admission.write("c"):
                pass
        async with admission.upload("d"):  # as before: writes do not hold uploads back
            assert (admission.uploads_in_flight, admission.writes_in_flight) == (2, 1)
    assert admission.refused_total == 0  # a refused write is not counted there
    assert admission.writes_in_flight == 0


async def test_a_clients_rate_is_counted_for_uploads_and_asked_for_sessions() -> None:
    admission = Admission(LIMITS, rate_limit=FakeRateLimit(allowed=1))
    async with admission.upload("cam"):
        pass
    with pytest.raises(errors.UploadRateLimited):
        async with admission.upload("cam"):
            pass
    with pytest.raises(errors.UploadRateLimited):
        await admission.admit_client("cam")
    await admission.admit_client("")  # no owner (authentication off): not limited
    assert admission.rate_limited_total == 2
    assert admission.uploads_in_flight == 0


async def test_buffers_are_two_parts_or_two_files_and_wait_for_the_budget() -> None:
    admission = Admission(LIMITS)
    async with admission.buffers(part_bytes=100, size_bytes=0):
        assert admission.memory.used_bytes == 200
        async with admission.buffers(part_bytes=100, size_bytes=30):
            assert admission.memory.used_bytes == 260
    assert admission.memory.used_bytes == 0

    async with admission.buffers(part_bytes=400, size_bytes=0):
        waiting = asyncio.create_task(_hold(admission.buffers(part_bytes=400, size_bytes=0)))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # 800 + 800 is over the budget of 1000
    await waiting
    assert admission.memory.used_bytes == 0


async def _hold(buffers: contextlib.AbstractAsyncContextManager[None]) -> None:
    async with buffers:
        pass


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
