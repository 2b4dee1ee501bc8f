"""Ports of the relay: what it needs from the outbox store, the lease store and Kafka.

Adapters (`adapters/mongo_relay_store.py`, `adapters/kafka_publisher.py`) implement them
and translate every vendor error into errors.py's classes at their boundary: a store method
may raise any of the database errors, a publisher PublisherUnavailable. The relay decides by
their `retriable`; its loops back off and try again in either case, forever.

Field names (`status`, `next_attempt_at`, ...) are those of `outbox/document.py`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, kw_only=True)
class PendingEvent:
    """An outbox event waiting to be published (status `new`)."""

    event_id: str
    video_id: str
    payload: Mapping[str, Any]
    created_at: datetime
    attempts: int = 0
    slot: int | None = None  # None: stored before slots existed (see backfill_slots)
    traceparent: str = ""  # the W3C trace context stored with the event, or ""
    owner: str = ""  # the client that made the event, or "" (authentication off)


@dataclass(frozen=True, kw_only=True)
class Lease:
    """One epoch of one shard's lease. The store's unique key is (shard, epoch)."""

    shard: int
    epoch: int
    owner: str
    expires_at: datetime  # the owner's wall clock; others add the clock-skew margin
    released: bool = False


class OutboxRelayStore(Protocol):
    """The relay's view of the outbox collection.

    Writes follow two rules: whenever `status` or `error` changes, `updated_at` is set to
    `now` too; and only the relay's own fields are written (`status` new->sent/failed,
    `sent_at`, `attempts`, `next_attempt_at`, `error`, `updated_at`, `relay_slot`). Updates
    filter on `status: "new"`, but a store may not re-check that filter atomically
    (FerretDB 1.24), so every update must be harmless when it loses a race.
    """

    async def ensure_indexes(self) -> None:
        """Create the indexes the relay relies on (idempotent)."""

    async def due(
        self, slot_ranges: Sequence[tuple[int, int]], now: datetime, limit: int
    ) -> list[PendingEvent]:
        """Up to `limit` `new` events whose slot is in one of the half-open ranges and whose
        `next_attempt_at` is not after `now`, oldest due first. No ranges: no events."""

    async def mark_sent(self, event_ids: Sequence[str], now: datetime) -> None:
        """Mark these `new` events `sent` (`sent_at` = `updated_at` = now, attempts + 1) in
        their status records, and in the outbox, or delete them there when the store keeps
        no sent messages (then `sweep_sent` finds none)."""

    async def reschedule(
        self, event_ids: Sequence[str], next_attempt_at: datetime, now: datetime
    ) -> None:
        """A transient failure: these stay `new`, attempts + 1, due again at
        `next_attempt_at`. Neither `status` nor `error` changes (so no `updated_at`)."""

    async def mark_failed(self, event_id: str, reason: str, now: datetime) -> None:
        """A permanent failure: status `failed`, `error` = reason, `updated_at` = now."""

    async def backfill_slots(self, limit: int) -> int:
        """Store the slot (and, if missing, `next_attempt_at`) of up to `limit` `new` events
        stored without one, as the seed service wrote them; the number done. Any relay may do
        this for any event: the values are pure functions of the document."""

    async def oldest_unsent_created_at(self) -> datetime | None:
        """`created_at` of the oldest `new` event, or None (the relay's lag)."""

    async def sweep_sent(self, sent_before: datetime, limit: int) -> int:
        """Delete up to `limit` `sent` events with `sent_at` before `sent_before`; never an
        event in any other status. Returns the number deleted."""


class LeaseStore(Protocol):
    """Shard leases and relay membership.

    Claiming rests only on `insert_lease`, an insert into a unique key: atomic on MongoDB
    and on FerretDB. Every other write is to a document only its writer owns, or harmless.
    """

    async def ensure_indexes(self) -> None:
        """Create what the leases rely on (idempotent)."""

    async def latest(self, shards: Sequence[int]) -> dict[int, Lease]:
        """The newest epoch's lease of each of these shards that has one."""

    async def insert_lease(self, lease: Lease) -> bool:
        """Insert this epoch's lease; False when that (shard, epoch) exists already (another
        relay won the race). Exactly one insert of a given (shard, epoch) ever succeeds."""

    async def renew(self, leases: Sequence[Lease], expires_at: datetime) -> None:
        """Move the expiry of the caller's own lease documents, in one write (no effect on
        those pruned meanwhile)."""

    async def release(self, lease: Lease, now: datetime) -> None:
        """Mark the caller's own lease released, so another relay may take the shard at once."""

    async def prune(self, shard: int, below_epoch: int) -> None:
        """Delete the shard's leases of epochs below `below_epoch` (never the newest)."""

    async def heartbeat(self, member: str, expires_at: datetime) -> None:
        """Announce that relay `member` is alive until `expires_at`."""

    async def members(self, alive_at: datetime) -> list[str]:
        """Relays whose heartbeat has not expired at `alive_at`."""

    async def leave(self, member: str) -> None:
        """Withdraw `member`'s heartbeat (graceful stop)."""


class PublishOutcome(enum.Enum):
    DELIVERED = "delivered"  # acknowledged by all in-sync replicas
    RETRY = "retry"  # transient: publish again later
    REJECTED = "rejected"  # permanent for this message (e.g. too large)


@dataclass(frozen=True)
class Message:
    """One Kafka record: key = event id, a versioned JSON value, and headers."""

    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)


@dataclass(frozen=True)
class PublishResult:
    outcome: PublishOutcome
    reason: str = ""


class Publisher(Protocol):
    """Publishes to one topic with an idempotent producer and acks from all replicas."""

    async def start(self) -> None:
        """Connect and create the topic if it is missing. Raises errors.PublisherUnavailable."""

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        """Send the messages and wait for their acknowledgements, in a bounded time; one
        PublishResult per message, in order. A transient failure of the whole batch may also be
        raised as errors.PublisherUnavailable. A message reported RETRY may still have been
        written (at least once); DELIVERED only after the broker acknowledged it. Fatal
        producer states are handled inside (the producer is recreated)."""

    @property
    def restarts(self) -> int:
        """How many times a producer was discarded and recreated (after a timeout or a
        fatal producer error)."""

    async def close(self) -> None:
        """Flush and stop, in a bounded time; never raises."""
