"""EventSource over aiokafka: a consumer group member of the relay's topic, committing by hand.

A batch handed out by `next_batch` is held until `finish`: a rebalance that would take its
partitions away waits for it (the listener's `on_partitions_revoked` takes the same lock), so
offsets are committed by the member that processed the records, and the next owner starts
after them. A member that dies instead (kill -9) commits nothing: its records are delivered
again to whoever gets the partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from ..domain import ConsumedRecord
from ..errors import ConsumerUnavailable

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _translated(operation: str) -> Iterator[None]:
    try:
        yield
    except KafkaError as exc:
        raise ConsumerUnavailable(f"{operation}: {type(exc).__name__}: {exc}") from exc


class _HoldBatches(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self._lock:  # the batch in hand is committed (or abandoned) first
            log.info(
                "partitions revoked", extra={"partitions": sorted(p.partition for p in revoked)}
            )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(p.partition for p in assigned)})


class KafkaEventSource:
    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        """`consumer` is built by the wiring with a group id, `enable_auto_commit=False`."""
        self._consumer = consumer
        self._topic = topic
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._consumer.subscribe([self._topic], listener=_HoldBatches(self._lock))
        with _translated("start"):
            await self._consumer.start()

    async def stop(self) -> None:
        with _translated("stop"):
            await self._consumer.stop()

    async def next_batch(self, *, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        await self._lock.acquire()
        try:
            with _translated("getmany"):
                found = await self._consumer.getmany(
                    timeout_ms=int(timeout_s * 1000), max_records=max_records
                )
        except BaseException:
            self._lock.release()
            raise
        batch = [
            ConsumedRecord(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                value=record.value or b"",
                headers=tuple((k, bytes(v or b"")) for k, v in record.headers),
            )
            for records in found.values()
            for record in records
        ]
        if not batch:
            self._lock.release()
        return batch

    async def finish(self, deliveries: Sequence[ConsumedRecord], *, commit: bool) -> bool:
        """Commit (or not: on shutdown) and release the batch's hold on its partitions."""
        try:
            if not commit:
                return False
            offsets: dict[TopicPartition, int] = {}
            for d in deliveries:
                tp = TopicPartition(d.topic, d.partition)
                offsets[tp] = max(offsets.get(tp, 0), d.offset + 1)
            try:
                await self._consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("offsets not committed: partitions moved (%s)", exc)
                return False
            except KafkaError as exc:
                raise ConsumerUnavailable(f"commit: {type(exc).__name__}: {exc}") from exc
            return True
        finally:
            self._lock.release()

    async def lag(self) -> int:
        # The broker's end offsets (one ListOffsets request), not the fetcher's highwater,
        # which goes stale while fetched records wait in its buffer.
        assigned = list(self._consumer.assignment())
        if not assigned:
            return 0
        with _translated("end_offsets"):
            ends = await self._consumer.end_offsets(assigned)
        total = 0
        for tp in assigned:
            try:
                position = await self._consumer.position(tp)
            except IllegalStateError:  # revoked meanwhile
                continue
            total += max(0, ends.get(tp, position) - position)
        return total

    def assigned(self) -> int:
        return len(self._consumer.assignment())
