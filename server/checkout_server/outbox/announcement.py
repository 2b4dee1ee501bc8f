"""Status changes announced on the status topic (checkout_common.status_message), so every
server's watchers learn of them without a database query: the record as a message, and the
`Announcer` that writers (the server for new events and results it marks, the relay for
`sent` and `failed`) hand their changes to.

Announcing never holds up a writer: `announce` only buffers, and one task sends. A change the
topic did not take (it is down or slow, or the buffer overflowed) is not sent again: the
writer's `on_lost` (a UDP wake-up, adapters/udp_wake.py) makes the other servers read the
database instead, which has the change already.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from checkout_common import status_message

from ..domain import EventStatus, OutboxEvent, input_object_key
from ..ports import StatusChannel

log = logging.getLogger(__name__)

# Changes sent in one write to the topic.
BATCH = 500
# After changes were lost, the servers are woken again this much later.
REWAKE_S = 1.0


def message_of(event: OutboxEvent) -> bytes:
    """The `checkout.status.changed` record of a status record as written: what a watcher
    is shown, and what a server needs to look for the event's result."""
    return status_message.encode(
        status_message.STATUS_CHANGED,
        {
            "event_id": event.event_id,
            "video_id": event.video_id,
            "bucket": event.bucket,
            "status": event.status.value,
            "created_at": event.created_at,
            "updated_at": event.updated_at,
            "ready_at": event.ready_at,
            "error": event.error,
            "owner": event.owner,
        },
    )


def event_of(fields: Mapping[str, Any]) -> OutboxEvent | None:
    """The event a `checkout.status.changed` record describes (its upload's file name, type,
    size and digest left out: nothing a watcher is shown), or None when it is malformed."""
    created_at = status_message.parse_time(fields.get("created_at"))
    updated_at = status_message.parse_time(fields.get("updated_at"))
    video_id, bucket = fields.get("video_id"), fields.get("bucket")
    try:
        status = EventStatus(str(fields.get("status")))
    except ValueError:
        return None
    if created_at is None or updated_at is None or not isinstance(video_id, str):
        return None
    if not isinstance(bucket, str):
        return None
    return OutboxEvent(
        event_id=str(fields["event_id"]),
        video_id=video_id,
        bucket=bucket,
        object_key=input_object_key(video_id),
        filename="",
        content_type="",
        size_bytes=0,
        sha256="",
        status=status,
        created_at=created_at,
        updated_at=updated_at,
        ready_at=status_message.parse_time(fields.get("ready_at")),
        error=str(fields.get("error") or ""),
        owner=str(fields.get("owner") or ""),
    )


class Announcer:
    """Sends status changes to the topic in the background, latest per event first come."""

    def __init__(
        self,
        channel: StatusChannel | None,
        *,
        on_lost: Callable[[], None] | None = None,
        max_pending: int = 10_000,
    ) -> None:
        """`channel` None: there is no topic (STATUS_TOPIC empty), every change is lost at
        once. `on_lost` is called for changes the topic did not take; it may neither block
        nor raise."""
        self._channel = channel
        self._on_lost = on_lost
        self._max_pending = max_pending
        self._pending: OrderedDict[str, OutboxEvent] = OrderedDict()
        self._ready = asyncio.Event()
        self._rewake_pending = False
        self._unsettled = False  # a change was lost since the writer last called `settled`
        self.sent = 0  # changes the topic acknowledged (for tests and metrics)
        self.lost = 0  # changes it did not take

    def announce(self, event: OutboxEvent) -> None:
        """Queue a change; never blocks. The oldest queued change is dropped past
        `max_pending` (then `on_lost`)."""
        if self._channel is None:
            self._lose(1)
            return
        self._pending[event.event_id] = event
        self._pending.move_to_end(event.event_id)
        if len(self._pending) > self._max_pending:
            self._pending.popitem(last=False)
            self._lose(1)
        self._ready.set()

    async def round(self) -> float:
        """Send what is queued (at most BATCH changes), waiting for some first."""
        await self._ready.wait()
        batch = [
            self._pending.popitem(last=False)[1] for _ in range(min(BATCH, len(self._pending)))
        ]
        if not self._pending:
            self._ready.clear()
        if not batch:
            return 0.0
        assert self._channel is not None
        try:
            taken = await self._channel.send([(e.event_id, message_of(e)) for e in batch])
        except asyncio.CancelledError:
            self._lose(len(batch))  # stopped mid-send: perhaps not taken
            raise
        if taken:
            self.sent += len(batch)
        else:
            self._lose(len(batch))
        return 0.0

    async def flush(self, timeout_s: float) -> None:
        """At shutdown, once the writer has stopped and `round` runs no more: send what is
        still queued, for at most `timeout_s`; what is not sent by then is lost (the servers
        are woken for it), never dropped unnoticed."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._pending:
                    await self.round()
        if self._pending:
            count = len(self._pending)
            self._pending.clear()
            self._ready.clear()
            self._lose(count)

    def settled(self) -> None:
        """The writer's records now hold the changes it announced (the relay's `sent`, which
        it announces before marking): if one was lost since the last call, the wake-up that
        caused may have been read before the mark, so wake the servers again now, rather
        than REWAKE_S later. Never blocks."""
        if self._unsettled and self._on_lost is not None:
            self._unsettled = False
            self._on_lost()

    def _lose(self, count: int) -> None:
        self.lost += count
        if self._on_lost is None:
            return
        self._unsettled = True
        self._on_lost()
        # Writers announce some changes before their record is written (the relay's `sent`
        # at Kafka's acknowledgement, a result as it is found): a read woken now may come
        # before the record's mark. Once more a moment later, then, for what landed since
        # (one pending at a time, however many are lost meanwhile).
        if not self._rewake_pending:
            self._rewake_pending = True
            asyncio.get_running_loop().call_later(REWAKE_S, self._rewake)

    def _rewake(self) -> None:
        self._rewake_pending = False
        if self._on_lost is not None:
            self._on_lost()
