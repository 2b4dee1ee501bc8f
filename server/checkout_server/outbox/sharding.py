"""Events are hashed into a fixed number of slots, and slots into shards.

The slot (0..SLOTS-1) is stored with each event by `to_document`, so a relay can select its
shards' events with a range query. Shards are contiguous slot ranges, so RELAY_SHARDS can be
any number from 1 to SLOTS without re-hashing stored events (all relays must agree on it).
"""

from __future__ import annotations

import zlib

SLOTS = 1024


def relay_slot(event_id: str) -> int:
    """The event's slot: stable across processes and versions (CRC-32, not `hash`)."""
    return zlib.crc32(event_id.encode()) % SLOTS


def shard_slots(shard: int, shards: int) -> tuple[int, int]:
    """The half-open slot range [low, high) of `shard` out of `shards`."""
    if not 0 <= shard < shards <= SLOTS:
        raise ValueError(f"shard {shard} out of 0..{shards - 1} (at most {SLOTS} shards)")
    return shard * SLOTS // shards, (shard + 1) * SLOTS // shards


def shard_of_slot(slot: int, shards: int) -> int:
    """The shard a slot belongs to (inverse of `shard_slots`)."""
    # Start from the estimate and move to the largest shard whose range starts at or before
    # `slot` (integer division makes the estimate off by at most one).
    shard = min(slot * shards // SLOTS, shards - 1)
    while shard + 1 < shards and shard_slots(shard + 1, shards)[0] <= slot:
        shard += 1
    while shard_slots(shard, shards)[0] > slot:
        shard -= 1
    return shard


def slot_ranges(shards_held: set[int] | frozenset[int], shards: int) -> list[tuple[int, int]]:
    """The slot ranges of the shards held, adjacent ranges merged (fewer query clauses)."""
    ranges: list[tuple[int, int]] = []
    for shard in sorted(shards_held):
        low, high = shard_slots(shard, shards)
        if ranges and ranges[-1][1] == low:
            ranges[-1] = (ranges[-1][0], high)
        else:
            ranges.append((low, high))
    return ranges
