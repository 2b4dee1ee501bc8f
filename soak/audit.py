"""The auditor: after a scenario, what the backends themselves hold (never the server's word)
against what the clients were told.

- every upload that returned an event id (over gRPC, or in a REST answer's JSON) has its
  object in MinIO, whose SHA-256 is that of the bytes sent, and its status record in FerretDB;
- every object under `input/` has its event (an outbox message or a status record), and
  every event its object (all or nothing, both ways);
- every event reaches Kafka at least once (the topic is consumed from its start);
- no call outlived its deadline (each was timed by the client);
- each server's RSS comes back to its baseline after the load.

Conditions that the system settles by itself (a status record the relay heals, a cleanup that
retries in the background, an event still waiting for Kafka) are waited for, up to a deadline,
before they count as violations.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient

from .load import Call, LoadResult
from .topology import Namespace

OUTBOX = "outbox"  # the server's default collection names
STATUSES = "event_statuses"
PREFIX = "input/"
HANG_SLACK_S = 3.0  # a loaded 2-core machine may answer a deadline this late
RSS_SLACK_BYTES = 48 * 1024 * 1024
RSS_SLACK_RATIO = 0.25
ORPHANED_OBJECT = "objects under input/ without an event"
EVENT_WITHOUT_OBJECT = "events whose object is missing"


@dataclass
class Audit:
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    events: int = 0
    kafka_records: int = 0
    kafka_events: int = 0
    duplicates: int = 0
    violations: list[str] = field(default_factory=list)
    rss_baseline: dict[str, int] = field(default_factory=dict)  # per server
    rss_after: dict[str, int] = field(default_factory=dict)

    def violate(self, what: str, items: list[str], *, limit: int = 5) -> None:
        if items:
            shown = ", ".join(sorted(items)[:limit])
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            self.violations.append(f"{what}: {len(items)}: {shown}{more}")


@dataclass(frozen=True)
class Stores:
    """Where the auditor reads: the backends themselves, not through the proxies."""

    mongo_uri: str
    minio_endpoint: str
    kafka_bootstrap: str


async def audit(
    load: LoadResult,
    namespace: Namespace,
    bucket: str,
    stores: Stores,
    *,
    settle_s: float,
    rss: Callable[[], Awaitable[dict[str, int]]] | None,
    rss_baseline: dict[str, int],
    rss_settle_s: float = 20.0,
) -> Audit:
    report = Audit(rss_baseline=rss_baseline)
    uploads = load.uploads()
    accepted = {c.event_id: c for c in uploads if c.ok}
    report.accepted = len(accepted)
    report.refused = Counter(c.refusal for c in uploads if not c.ok)
    for call in uploads:
        if call.ok and call.response_sha256 != call.sha256:
            report.violations.append(f"answered sha256 differs for {call.event_id}")
    hung = [
        f"{c.kind} {c.elapsed_s:.1f}s>{c.deadline_s:.0f}s"
        for c in load.calls
        if c.elapsed_s > c.deadline_s + HANG_SLACK_S
    ]
    report.violate("calls past their deadline", hung)

    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stores.mongo_uri)
    s3 = Minio(
        stores.minio_endpoint, access_key="minioadmin", secret_key="minioadmin", secure=False
    )
    try:
        scope = Scope(namespace.database, namespace.topic, bucket)
        await _settle_storage(report, accepted, scope, mongo, s3, settle_s)
        events = await _events(mongo, scope)
        report.events = len(events)
        await _kafka(report, events, scope, stores.kafka_bootstrap, settle_s)
    finally:
        await mongo.close()
        await s3.close_session()  # type: ignore[no-untyped-call]
    if rss is not None:
        await _memory(report, rss, rss_settle_s)
    return report


@dataclass(frozen=True)
class Scope:
    """What one scenario's audit looks at: its bucket, and the events of its videos."""

    database: str
    topic: str
    bucket: str


async def _ids(mongo: AsyncMongoClient[dict[str, object]], ns: Scope, collection: str) -> set[str]:
    found = mongo[ns.database][collection].find({"payload.bucket": ns.bucket}, {"_id": 1})
    return {str(doc["_id"]) async for doc in found}


async def _events(mongo: AsyncMongoClient[dict[str, object]], ns: Scope) -> set[str]:
    return await _ids(mongo, ns, OUTBOX) | await _ids(mongo, ns, STATUSES)


async def _objects(s3: Minio, bucket: str) -> set[str]:
    keys = set()
    async for obj in s3.list_objects(bucket, prefix=PREFIX, recursive=True):
        name = obj.object_name or ""
        keys.add(name.removeprefix(PREFIX).removesuffix(".mp4"))
    return keys


async def _sha256(s3: Minio, bucket: str, video_id: str) -> str:
    digest = hashlib.sha256()
    response = await s3.get_object(bucket, f"{PREFIX}{video_id}.mp4")
    try:
        async for block in response.content.iter_chunked(1 << 20):
            digest.update(block)
    finally:
        response.close()
    return digest.hexdigest()


async def _settle_storage(
    report: Audit,
    accepted: dict[str, Call],
    ns: Scope,
    mongo: AsyncMongoClient[dict[str, object]],
    s3: Minio,
    settle_s: float,
) -> None:
    """Objects and records, looked at again until they agree or `settle_s` has passed."""
    deadline = time.monotonic() + settle_s
    while True:
        statuses = await _ids(mongo, ns, STATUSES)
        events = await _events(mongo, ns)
        objects = await _objects(s3, ns.bucket) if await s3.bucket_exists(ns.bucket) else set()
        no_object = [e for e in accepted if e not in objects]
        no_status = [e for e in accepted if e not in statuses]
        orphans = [o for o in objects if o not in events]
        no_file = [e for e in events if e not in objects]
        if not (no_object or no_status or orphans or no_file) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    report.violate("accepted uploads without their object", no_object)
    report.violate("accepted uploads without a status record", no_status)
    report.violate(ORPHANED_OBJECT, orphans)
    report.violate(EVENT_WITHOUT_OBJECT, no_file)
    calls = {e: c for e, c in accepted.items() if e in objects}
    wrong = []
    for event_id, call in calls.items():
        if await _sha256(s3, ns.bucket, event_id) != call.sha256:
            wrong.append(event_id)
    report.violate("stored objects whose sha256 differs from the bytes sent", wrong)


async def _kafka(
    report: Audit, events: set[str], ns: Scope, bootstrap: str, settle_s: float
) -> None:
    """Consume the topic from its start until every event is seen and the end is reached, or
    `settle_s` has passed."""
    consumer = AIOKafkaConsumer(
        ns.topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    keys: Counter[str] = Counter()
    deadline = time.monotonic() + settle_s
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if json.loads(record.value or b"{}").get("bucket") == ns.bucket:
                        keys[(record.key or b"").decode()] += 1
            if events <= set(keys) and await _caught_up(consumer):
                break
            if time.monotonic() > deadline:
                break
    finally:
        await consumer.stop()
    report.kafka_records = sum(keys.values())
    report.kafka_events = len(keys)
    report.duplicates = report.kafka_records - report.kafka_events
    report.violate("events never in Kafka", [e for e in events if e not in keys])
    report.violate("Kafka records of no event", [k for k in keys if k not in events])


async def _caught_up(consumer: AIOKafkaConsumer) -> bool:
    partitions: set[TopicPartition] = consumer.assignment()
    if not partitions:
        return False
    ends = await consumer.end_offsets(list(partitions))
    for tp in partitions:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


async def _memory(
    report: Audit, rss: Callable[[], Awaitable[dict[str, int]]], settle_s: float
) -> None:
    """Each server's RSS (by name) back under its baseline plus the slack, waited for."""
    limits = {
        name: base + max(RSS_SLACK_BYTES, int(base * RSS_SLACK_RATIO))
        for name, base in report.rss_baseline.items()
    }
    deadline = time.monotonic() + settle_s
    while True:
        report.rss_after = await rss()
        above = [n for n, limit in limits.items() if report.rss_after.get(n, 0) > limit]
        if not above or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    for name in above:
        report.violations.append(
            f"{name} RSS {report.rss_after[name] / 2**20:.0f} MiB stayed above its baseline"
            f" {report.rss_baseline[name] / 2**20:.0f} MiB (limit {limits[name] / 2**20:.0f} MiB)"
        )
