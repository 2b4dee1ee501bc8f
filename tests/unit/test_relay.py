"""Relay logic with in-memory fakes: sharding, the envelope, backoff, and lease fencing."""

from __future__ import annotations

import json

import pytest

from checkout_client.backoff import Backoff
from checkout_server.errors import EnvelopeError
from checkout_server.outbox.document import to_document
from checkout_server.outbox.sharding import (
    SLOTS,
    relay_slot,
    shard_of_slot,
    shard_slots,
    slot_ranges,
)
from checkout_server.relay.envelope import build_message
from checkout_server.relay.leases import LeaseManager
from checkout_server.relay.ports import Lease, PendingEvent
from tests.fakes import T0, FakeClock, FakeLeaseStore
from tests.helpers import outbox_event

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("shards", [1, 3, 16, 1000, SLOTS])
def test_every_slot_belongs_to_exactly_one_shard(shards: int) -> None:
    for slot in range(SLOTS):
        low, high = shard_slots(shard_of_slot(slot, shards), shards)
        assert low <= slot < high


def test_adjacent_ranges_merge() -> None:
    assert slot_ranges({0, 1, 3}, 4) == [(0, 512), (768, 1024)]
    assert slot_ranges(set(range(16)), 16) == [(0, SLOTS)]


def test_stored_slot_matches_the_relay() -> None:
    event = outbox_event(
        "7b0c9c1e-0000-4000-8000-000000000001",
        video_id="v",
        bucket="b",
        object_key="k",
        filename="f",
        at=T0,
    )
    assert to_document(event)["relay_slot"] == relay_slot(event.event_id)


def _pending(**payload: object) -> PendingEvent:
    base = {"bucket": "videos", "object_key": "input/x.mp4", "size_bytes": 5, "sha256": "ab"}
    return PendingEvent(event_id="e1", video_id="e1", payload={**base, **payload}, created_at=T0)


def test_envelope_key_value_and_headers() -> None:
    message = build_message(_pending())
    assert message.key == b"e1"
    assert json.loads(message.value) == {
        "version": 1,
        "event_id": "e1",
        "type": "checkout.video.uploaded",
        "video_id": "e1",
        "bucket": "videos",
        "object_key": "input/x.mp4",
        "size_bytes": 5,
        "sha256": "ab",
        "created_at": "2026-01-01T00:00:00.000+00:00",
    }
    assert dict(message.headers)["event_id"] == b"e1"
    assert dict(message.headers)["event_type"] == b"checkout.video.uploaded"


def test_unserialisable_event_is_a_permanent_error() -> None:
    with pytest.raises(EnvelopeError):
        build_message(_pending(size_bytes="many"))


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.delay_s(failures) for failures in range(1, 9)]
    for delay, ceiling in zip(delays, [0.5, 1, 2, 4, 4, 4, 4, 4], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    # The count restarts after a success: the first failure waits the least again.
    assert backoff.delay_s(1) <= 0.5


def _manager(store: FakeLeaseStore, clock: FakeClock, member: str) -> LeaseManager:
    return LeaseManager(store, member=member, shards=8, ttl_s=6, skew_s=1, clock=clock)


async def test_relays_share_the_shards_without_overlap() -> None:
    store, clock = FakeLeaseStore(), FakeClock()
    a, b = _manager(store, clock, "a"), _manager(store, clock, "b")
    await a.rebalance()
    assert a.valid_shards() == frozenset(range(8))
    await b.rebalance()  # a holds everything: b waits
    assert b.valid_shards() == frozenset()
    await a.rebalance()  # a sees b and releases half
    await b.rebalance()
    assert len(a.valid_shards()) == len(b.valid_shards()) == 4
    assert a.valid_shards().isdisjoint(b.valid_shards())


async def test_a_paused_relay_stops_and_the_other_takes_over() -> None:
    store, clock = FakeLeaseStore(), FakeClock()
    a, b = _manager(store, clock, "a"), _manager(store, clock, "b")
    await a.rebalance()
    clock.advance(8)  # a is paused past its lease (ttl 6 s + skew 1 s)
    assert a.valid_shards() == frozenset()  # by its own clock, before any query
    await b.rebalance()
    assert b.valid_shards() == frozenset(range(8))
    assert all(b.epoch_of(s) == 2 for s in range(8))
    await a.renew()  # never resurrects a lease that ran out
    assert a.valid_shards() == frozenset()
    assert await b.confirm(range(8)) == frozenset(range(8))


async def test_confirm_drops_a_shard_with_a_newer_epoch() -> None:
    store, clock = FakeLeaseStore(), FakeClock()
    a = _manager(store, clock, "a")
    await a.rebalance()
    await store.insert_lease(Lease(shard=3, epoch=2, owner="x", expires_at=T0))
    assert 3 not in await a.confirm(range(8))
    assert 3 not in a.valid_shards()
    assert a.lost_total == 1


async def test_release_all_frees_the_shards_at_once() -> None:
    store, clock = FakeLeaseStore(), FakeClock()
    a, b = _manager(store, clock, "a"), _manager(store, clock, "b")
    await a.rebalance()
    await a.release_all()
    await b.rebalance()
    assert b.valid_shards() == frozenset(range(8))
