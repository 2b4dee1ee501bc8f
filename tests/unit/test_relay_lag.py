"""The outbox lag is measured once for the whole deployment: by the relay holding shard 0."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from checkout_server.relay.leases import LeaseManager
from checkout_server.relay.metrics import RelayMetrics
from checkout_server.relay.relay import Relay, RelayConfig
from checkout_server.supervisor import Supervisor
from tests.fakes import T0, FakeClock, FakeLeaseStore, FakePublisher, FakeRelayStore

pytestmark = pytest.mark.timeout(10)

SHARDS = 4
LAG = "checkout_relay_oldest_unsent_age_s"


class CountingStore(FakeRelayStore):
    lag_queries: int = 0

    async def oldest_unsent_created_at(self) -> datetime | None:
        self.lag_queries += 1
        return await super().oldest_unsent_created_at()


def relay(member: str, store: FakeRelayStore, leases: FakeLeaseStore, clock: FakeClock) -> Relay:
    return Relay(
        store=store,
        leases=LeaseManager(leases, member=member, shards=SHARDS, ttl_s=6, skew_s=1, clock=clock),
        publisher=FakePublisher(),
        metrics=RelayMetrics(),
        config=RelayConfig(shards=SHARDS),
        clock=clock,
        supervisor=Supervisor(),
    )


def lag_lines(relay: Relay) -> list[str]:
    return [line for line in relay._metrics.render().splitlines() if line.startswith(LAG)]


async def test_only_the_holder_of_shard_0_measures_and_exports_the_lag() -> None:
    clock, leases, store = FakeClock(), FakeLeaseStore(), CountingStore()
    store.add("waiting", created_at=T0 - timedelta(seconds=30))
    first, second = relay("a", store, leases, clock), relay("b", store, leases, clock)
    await first._leases.rebalance()  # alone: it takes every shard, shard 0 too
    await second._leases.rebalance()  # nothing is free
    assert 0 in first._leases.valid_shards()
    assert not second._leases.valid_shards()

    await first._measure_lag()
    await second._measure_lag()

    assert store.lag_queries == 1  # one query, by the holder
    assert lag_lines(first) == [f"{LAG} 30.0"]
    assert lag_lines(second) == []  # neither a copy nor a zero


async def test_a_relay_that_loses_shard_0_stops_exporting_the_lag() -> None:
    clock, leases, store = FakeClock(), FakeLeaseStore(), CountingStore()
    holder = relay("a", store, leases, clock)
    await holder._leases.rebalance()
    await holder._measure_lag()
    assert lag_lines(holder) == [f"{LAG} 0.0"]  # nothing waits

    await holder._leases.release_all()
    await holder._measure_lag()

    assert store.lag_queries == 1
    assert lag_lines(holder) == []
