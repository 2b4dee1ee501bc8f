"""The write lease of a resumable session over an in-memory store: one stream at a time; a
second stream asks and the holder lets go (its stream ends UPLOAD_TAKEN_OVER), unless it is
finishing (then the second gets UPLOAD_BUSY); a holder that stopped renewing is taken over
once its lease ran out; released in the end, also when the stream fails."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from checkout_server import errors
from checkout_server.ports import WriteLease
from checkout_server.upload.lease import LeaseTimes, WriteLeases
from tests.fakes import FakeUploadSessions

pytestmark = pytest.mark.timeout(20)

TIMES = LeaseTimes(ttl_s=0.3, skew_s=0.05, takeover_wait_s=1.0)


def leases(store: FakeUploadSessions, name: str) -> WriteLeases:
    return WriteLeases(store, process=name, times=TIMES)


async def test_a_second_stream_asks_and_the_holder_lets_go() -> None:
    store = FakeUploadSessions()
    first, second = leases(store, "a"), leases(store, "b")
    holding = asyncio.Event()

    async def hold_forever() -> None:
        async with first.hold("u") as held:
            holding.set()
            await held.run(asyncio.Event().wait())

    holder = asyncio.ensure_future(hold_forever())
    await holding.wait()
    async with second.hold("u") as taken:
        assert taken.lease.epoch == 2
    with pytest.raises(errors.UploadTakenOver):
        await holder
    assert (await store.latest_lease("u")).released


async def test_a_finishing_holder_does_not_let_go_and_the_second_is_busy() -> None:
    store = FakeUploadSessions()
    first, second = leases(store, "a"), leases(store, "b")
    async with first.hold("u") as held:
        held.finishing = True
        with pytest.raises(errors.UploadBusy):
            async with second.hold("u"):
                pass
        assert not held.lost.is_set()
    assert (await store.latest_lease("u")).epoch == 1


async def test_a_lease_not_renewed_is_taken_over_after_it_ran_out() -> None:
    store = FakeUploadSessions()
    dead = WriteLease(
        upload_id="u", epoch=1, holder="gone", expires_at=datetime.now(UTC) + timedelta(seconds=0.2)
    )
    assert await store.take_lease(dead)
    async with leases(store, "b").hold("u") as taken:
        assert taken.lease.epoch == 2
        assert ("u", 1) in store.asks  # it asked first


async def test_the_lease_is_released_when_the_stream_fails() -> None:
    store = FakeUploadSessions()
    with pytest.raises(RuntimeError):
        async with leases(store, "a").hold("u"):
            raise RuntimeError("the stream broke")
    assert (await store.latest_lease("u")).released
    async with leases(store, "b").hold("u") as taken:  # at once: no waiting for a TTL
        assert taken.lease.epoch == 2


class Stopped(asyncio.CancelledError):
    """What a cancelled piece of work raises to say where it stopped."""


async def test_a_cancelled_stream_stops_its_work_before_the_lease_is_released() -> None:
    store = FakeUploadSessions()
    started, work_ended = asyncio.Event(), asyncio.Event()
    released_while_working: list[bool] = []

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # cleaning up: the lease must still be held meanwhile
            released_while_working.append((await store.latest_lease("u")).released)
            work_ended.set()
            raise Stopped() from None

    async def stream() -> None:
        async with leases(store, "a").hold("u") as held:
            await held.run(work())

    streaming = asyncio.ensure_future(stream())
    await started.wait()
    streaming.cancel()
    with pytest.raises(Stopped):  # the work's own CancelledError, with what it says
        await streaming
    assert work_ended.is_set()
    assert released_while_working == [False]
    assert (await store.latest_lease("u")).released
