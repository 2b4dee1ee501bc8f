"""Status changes, watched once per server process and fanned out to every watcher.

One change feed per process, whatever the number of watchers. Changes are pushed: every
writer announces what it wrote on the status topic (outbox/announcement.py), which each
server reads from its end (adapters/kafka_status.py, `changed` here), so a change reaches the
watchers of every server without a database query. The runner announces each result it
writes (`result_written`): the server checks it in storage, and its watchers see `ready` (or
`failed`) as the record is marked. A watcher that reads a record its server heard news of
(announced before the mark landed) starts from the news (`latest`).

The database has every status, and is read:
- by the poller, for the status records whose `updated_at` moved (only while someone
  watches, so MongoDB sees the same query rate for one watcher or a thousand), while the
  topic is not live (Kafka down, or this server not yet reading it): when woken (`wake()`:
  a writer's announcement was lost, a UDP wake-up), at most once per `poll_min_gap_s`, and
  otherwise every `poll_interval_s`. Once the topic is live again it reads once more, for
  what was written meanwhile, and then only when woken;
- for the results of the events single-event watchers follow, every
  `result_check_interval_s`: one storage request per watched event, however many watch it,
  and at most _WATCHED_CHECKS_PER_S a second in all; the path of a runner that writes
  results without announcing them;
- by a slower reconcile, for every event still waiting for a result, so listings and
  all-events watchers learn of results nobody was watching for.
Each status of an event is offered once, whichever way it comes, and never one behind a
status already offered (new, then sent, then ready or failed). (MinIO bucket notifications
would be the natural fast path for results; docs/status.md says why they are not used.)
The loops run under the process's Supervisor: a round that raises anything is logged,
counted and retried, so the feed never ends silently.

Each watcher has a bounded mailbox that keeps only the latest change per event: publishing
never waits for a watcher, a slow watcher cannot hold up the others, and one that falls
more than `max_pending` events behind is told to re-subscribe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta

from .. import errors
from ..domain import EventStatus, OutboxEvent
from ..ports import StatusRecords
from ..supervisor import Supervisor
from .service import StatusService

log = logging.getLogger(__name__)

# Writers' clocks and commit order differ a little: each poll looks back this far and
# drops what it has already published.
_OVERLAP = timedelta(seconds=2)
_POLL_BATCH = 500
_RECONCILE_BATCH = 1000
_RECONCILE_CONCURRENCY = 8
# Storage checks a second of a reconcile round: a round of a thousand due events spreads them
# over 20 s, rather than taking the machine from the lookups for seconds at each round.
_RECONCILE_CHECKS_PER_S = 50
# An event still waiting is checked again after an interval that doubles from the reconcile
# interval up to this (an event waiting for hours is checked hourly): checking every waiting
# event every round cost an idle server with 600 of them (no detection runner) 2.4 % of a
# core, most of its idle CPU, and each 5 minutes still most of an idle stack's at 100,000.
_RECHECK_MAX_S = 3600.0
# While the reconcile's rounds meet no new upload and find no result, the pause between them
# doubles from the reconcile interval up to this.
_ROUND_PAUSE_MAX_S = 300.0
# A lost announcement wakes the poller while the topic is live: it reads this far back.
_LOST_LOOKBACK = timedelta(seconds=30)
# The latest state of this many events is kept (the most recently changed): to offer each
# status once and never an older one, and to check a result the runner announces without
# reading its record.
_LATEST_MAX = 10_000
# Results the runner announced and not yet checked: past this, the oldest are left to the
# reconcile.
_HINTS_MAX = 10_000
_RANK = {EventStatus.NEW: 0, EventStatus.SENT: 1, EventStatus.READY: 2, EventStatus.FAILED: 2}
# Storage checks a second for the results of watched events, however many are watched.
_WATCHED_CHECKS_PER_S = 50
# What `WatchHub.subscribe` refuses, each counted in `WatchHub.refusals`.
WATCH_REFUSAL_REASONS = (errors.TooManyWatchers.reason, errors.TooManyClientWatchers.reason)


def _newer(event: OutboxEvent, known: OutboxEvent) -> bool:
    """Whether `event` is news after `known`, of the same id: a later status of the same
    event, or the event made again (after a Cleanup raced a resumable upload's finish, the
    one way an id comes back: a later `created_at`)."""
    made, known_made = _stored(event.created_at), _stored(known.created_at)
    if made != known_made:
        return made > known_made
    return _RANK[event.api_status] > _RANK[known.api_status]


def _stored(at: datetime) -> datetime:
    """A time as stored: BSON dates and the status topic's records keep milliseconds, this
    process's own events have microseconds."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


class Subscription:
    """One watcher's mailbox: the latest change per event (all events, or just one; only
    `owner`'s when given, so a watcher is never woken for changes it may not see)."""

    def __init__(self, event_id: str | None, max_pending: int, owner: str | None = None) -> None:
        self.event_id = event_id
        self.owner = owner
        self._max_pending = max_pending
        self._pending: OrderedDict[str, OutboxEvent] = OrderedDict()
        self._wake = asyncio.Event()
        self.overflowed = False
        self.closed = False  # the hub is stopping: the watcher should end its stream

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def offer(self, event: OutboxEvent) -> None:
        """Never blocks: replaces an undelivered change of the same event."""
        if self.event_id is not None and event.event_id != self.event_id:
            return
        if self.owner is not None and event.owner != self.owner:
            return
        self._pending[event.event_id] = event
        self._pending.move_to_end(event.event_id)
        if len(self._pending) > self._max_pending:
            self.overflowed = True
            self._pending.popitem(last=False)
        self._wake.set()

    async def next(self, timeout_s: float) -> list[OutboxEvent]:
        """The changes since the last call, oldest first; empty after `timeout_s` with none."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()
        changes = list(self._pending.values())
        self._pending.clear()
        return changes


class WatchHub:
    def __init__(
        self,
        *,
        records: StatusRecords,
        status: StatusService,
        supervisor: Supervisor,
        poll_interval_s: float,
        poll_min_gap_s: float,
        result_check_interval_s: float,
        reconcile_interval_s: float,
        max_pending: int,
        max_watchers: int = 4096,
        max_watchers_per_client: int = 256,
        reconcile_checks_per_s: int = _RECONCILE_CHECKS_PER_S,
    ) -> None:
        self._records = records
        self._status = status
        self._supervisor = supervisor
        self._poll_interval_s = poll_interval_s
        self._poll_min_gap_s = poll_min_gap_s
        self._woken = asyncio.Event()  # a change was announced since the last poll began
        self._result_check_interval_s = result_check_interval_s
        self._reconcile_interval_s = reconcile_interval_s
        self._reconcile_checks_per_s = reconcile_checks_per_s
        self._max_pending = max_pending
        self._subscriptions: set[Subscription] = set()
        self._max_watchers = max_watchers
        self._max_watchers_per_client = max_watchers_per_client
        self._per_client: collections.Counter[str] = collections.Counter()
        # Subscriptions refused, by the error's reason (for the metrics).
        self.refusals: collections.Counter[str] = collections.Counter()
        # The latest known state of each event a single-event watcher follows.
        self._tracked: dict[str, OutboxEvent] = {}
        self._watched = asyncio.Event()  # someone is subscribed
        self._latest: OrderedDict[str, OutboxEvent] = OrderedDict()
        self._cursor: datetime | None = None
        self._live = False  # the status topic is read (`changed`): no periodic poll
        self._hints: OrderedDict[str, None] = OrderedDict()
        self._hinted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Waiting events the reconcile checked: event id -> (next check, interval), monotonic.
        self._rechecks: dict[str, tuple[float, float]] = {}
        self._reconcile_pause_s = reconcile_interval_s  # grows while the rounds find nothing
        self._reconciled_at: datetime | None = None  # when the last round began
        self._uploaded = asyncio.Event()  # a new event was heard of since the last round
        self.polls = 0  # status record queries made by the poller (for tests and metrics)
        # Watched events waiting for a result: when each was last checked (monotonic).
        self._watched_checks: dict[str, float] = {}
        self.record_reads = 0  # records read for announced results (for tests and metrics)

    @property
    def watchers(self) -> int:
        return len(self._subscriptions)

    @property
    def reconcile_pause_s(self) -> float:
        """The longest pause after the last result reconcile round (`_reconcile_round`)."""
        return self._reconcile_pause_s

    @property
    def live(self) -> bool:
        """Whether the status topic is read (`topic_live`)."""
        return self._live

    @contextmanager
    def subscribe(
        self, event_id: str | None, *, client: str = "", owner: str | None = None
    ) -> Iterator[Subscription]:
        """A mailbox for the block, for `client` (api/clients.py names it), of `owner`'s
        events only when given (an uploader's):
        TooManyWatchers past `max_watchers` open in all, TooManyClientWatchers past
        `max_watchers_per_client` of this client's, checked before it subscribes."""
        if len(self._subscriptions) >= self._max_watchers:
            self._refuse(errors.TooManyWatchers(limit=str(self._max_watchers)))
        if self._per_client[client] >= self._max_watchers_per_client:
            self._refuse(errors.TooManyClientWatchers(limit=str(self._max_watchers_per_client)))
        subscription = Subscription(event_id, self._max_pending, owner)
        self._subscriptions.add(subscription)
        self._per_client[client] += 1
        self._watched.set()
        try:
            yield subscription
        finally:
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]
            self._subscriptions.discard(subscription)
            if event_id is not None and not any(
                s.event_id == event_id for s in self._subscriptions
            ):
                self._tracked.pop(event_id, None)
            if not self._subscriptions:
                self._watched.clear()

    def _refuse(self, error: errors.ServiceError) -> None:
        self.refusals[error.reason] += 1
        raise error

    def track(self, event: OutboxEvent) -> None:
        """A single-event watcher has read `event`: look out for its result from now on."""
        known = self._tracked.get(event.event_id)
        if known is None or event.updated_at >= known.updated_at:
            self._tracked[event.event_id] = event

    def publish(self, event: OutboxEvent) -> None:
        """Offer a change to every watcher, once per status of an event and never one behind
        a status offered before: this process's own writes (`on_changed` of the status
        service, `on_recorded` of the outbox), the status topic and the poller may each bring
        it."""
        known = self._latest.get(event.event_id)
        if known is not None and not _newer(event, known):
            return
        self._latest[event.event_id] = event
        self._latest.move_to_end(event.event_id)
        if len(self._latest) > _LATEST_MAX:
            self._latest.popitem(last=False)
        if event.event_id in self._tracked:
            self.track(event)
        if event.status is EventStatus.NEW:
            self._uploaded.set()
        for subscription in self._subscriptions:
            subscription.offer(event)

    def latest(self, event: OutboxEvent) -> OutboxEvent:
        """`event` as read from the database, or what this hub heard of it since, if that is
        news (a status announced before its record was marked)."""
        known = self._latest.get(event.event_id)
        return known if known is not None and _newer(known, event) else event

    def changed(self, event: OutboxEvent) -> None:
        """A change read from the status topic."""
        self.publish(event)

    def result_written(self, event_id: str) -> None:
        """The runner announced a result for this event: check it soon (never blocks)."""
        self._hints[event_id] = None
        if len(self._hints) > _HINTS_MAX:
            self._hints.popitem(last=False)  # the reconcile finds it
        self._hinted.set()

    def topic_live(self, live: bool) -> None:
        """Whether the status topic is read: while not, the poller reads the database. Each
        change of it makes the poller look once (live again: for what the topic missed)."""
        self._live = live
        if live and self._cursor is None:
            return  # nobody watched while it was not: nothing to catch up on
        self._woken.set()

    def wake(self) -> None:
        """A status change was written and its announcement lost: look soon, if anyone
        watches. Never blocks; a wake-up is a hint, and one lost costs latency, never a
        change."""
        self._woken.set()

    def start(self) -> None:
        spawn = self._supervisor.spawn
        self._tasks += [
            spawn("watch-poller", self._poll_round),
            spawn("result-reconcile", self._reconcile_round),
            spawn("result-check-watched", self._check_watched_round),
            spawn("result-hints", self._hints_round),
        ]

    def close_subscriptions(self) -> None:
        """Ask every watcher to end (at shutdown, so streams do not hold the grace period)."""
        for subscription in self._subscriptions:
            subscription.close()

    async def stop(self) -> None:
        self.close_subscriptions()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # --- the outbox poller -------------------------------------------------------------------

    async def _poll_round(self) -> float:
        if not self._watched.is_set():
            self._cursor = None  # nobody watched: start afresh when someone does
            await self._watched.wait()
        if self._live and not self._woken.is_set():
            # Changes come from the topic: read only when an announcement was lost or the
            # topic failed, from a while back (a writer tries to announce a change first).
            await self._woken.wait()
            self._cursor = datetime.now(UTC) - _LOST_LOOKBACK
        self._woken.clear()  # from here on, a wake-up means: look again
        began = time.monotonic()
        if await self.poll_once():
            return 0.0  # a full batch: there is more now
        if not self._live:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._poll_interval_s)
        # Woken (or the safety net is due): look again, but no sooner than the gap allows.
        return max(0.0, began + self._poll_min_gap_s - time.monotonic())

    async def poll_once(self) -> bool:
        """Publish what changed since the last poll; True if there may be more right away."""
        if self._cursor is None:
            self._cursor = datetime.now(UTC)
        since = self._cursor - _OVERLAP
        self.polls += 1
        changed = await self._records.changed_since(since, limit=_POLL_BATCH)
        for event in changed:
            self.publish(event)  # once, however often the look-back brings it
            self._cursor = max(self._cursor, event.updated_at)
        return len(changed) == _POLL_BATCH

    # --- results the runner announced ------------------------------------------------------

    async def _hints_round(self) -> float:
        await self._hinted.wait()
        self._hinted.clear()
        await self.check_hints_once()
        return 0.0

    async def check_hints_once(self) -> None:
        """Check the results announced since the last call, and offer those found (marked
        here, or already by another server) to the watchers."""
        hinted, self._hints = list(self._hints), OrderedDict()
        limit = asyncio.Semaphore(_RECONCILE_CONCURRENCY)

        async def check(event_id: str) -> None:
            async with limit:
                event = self._latest.get(event_id) or self._tracked.get(event_id)
                if event is None:
                    self.record_reads += 1
                    event = await self._status.find(event_id)  # a record this server missed
                if event is not None:
                    refreshed = await self._status.refresh(event)
                    if refreshed.ready_at is not None:
                        self.publish(refreshed)

        await asyncio.gather(*(check(e) for e in hinted))

    # --- results in storage --------------------------------------------------------------

    async def _check_watched_round(self) -> float:
        await self._watched.wait()
        await self.check_watched_once()
        return self._result_check_interval_s

    async def check_watched_once(self) -> None:
        """Look for the results of the events someone watches and that are not ready: at
        most _WATCHED_CHECKS_PER_S a second in all, those checked longest ago first, so a
        thousand watched events cost what fifty do (each is then checked every 20 s rather
        than every round; a runner that announces its results is not waited for this way)."""
        waiting = [e for e in self._tracked.values() if e.ready_at is None]
        budget = max(1, round(_WATCHED_CHECKS_PER_S * self._result_check_interval_s))
        waiting.sort(key=lambda e: self._watched_checks.get(e.event_id, 0.0))
        due = waiting[:budget]
        now = time.monotonic()
        self._watched_checks = {
            e.event_id: self._watched_checks.get(e.event_id, 0.0) for e in waiting
        } | {e.event_id: now for e in due}
        await self._refresh_all(due)

    async def _reconcile_round(self) -> float:
        """A round, then a pause of RESULT_RECONCILE_INTERVAL_S while uploads come or results
        are found, doubling up to _ROUND_PAUSE_MAX_S while neither happens (an idle server's
        rounds were most of its cost); an upload heard of cuts a long pause short."""
        self._uploaded.clear()  # from here on, an upload heard of ends the pause
        busy = await self.reconcile_once()
        longest = max(_ROUND_PAUSE_MAX_S, self._reconcile_interval_s)
        self._reconcile_pause_s = (
            self._reconcile_interval_s if busy else min(2 * self._reconcile_pause_s, longest)
        )
        ended = time.monotonic()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._uploaded.wait(), self._reconcile_pause_s)
        return max(0.0, ended + self._reconcile_interval_s - time.monotonic())

    async def reconcile_once(self) -> bool:
        """Check storage for the results of events still waiting for one: each at once when
        first seen, then again after an interval that doubles from the reconcile interval up
        to _RECHECK_MAX_S (a result comes soon after its upload or late; watched events are
        checked every result_check_interval_s meanwhile, and GetStatus checks on demand).
        True if it found a result, or met an event made since the last round began."""
        began = datetime.now(UTC)
        waiting = await self._records.unready(limit=_RECONCILE_BATCH)
        now = time.monotonic()
        due = [e for e in waiting if self._rechecks.get(e.event_id, (0.0, 0.0))[0] <= now]
        refreshed = await self._refresh_paced(due)
        since, self._reconciled_at = self._reconciled_at, began
        new = any(
            since is None or e.created_at >= since - _OVERLAP
            for e in due
            if e.event_id not in self._rechecks
        )
        still = {e.event_id for e in waiting}
        rechecks = {k: v for k, v in self._rechecks.items() if k in still}
        longest = max(_RECHECK_MAX_S, self._reconcile_interval_s)
        for event in due:
            previous = rechecks.get(event.event_id, (0.0, self._reconcile_interval_s / 2))[1]
            interval = min(2 * previous, longest)
            rechecks[event.event_id] = (now + interval, interval)
        self._rechecks = rechecks
        return new or any(e.ready_at is not None for e in refreshed)

    async def _refresh_paced(self, events: list[OutboxEvent]) -> list[OutboxEvent]:
        """`events` refreshed, at most `reconcile_checks_per_s` in any second."""
        per_s, refreshed = self._reconcile_checks_per_s, []
        for first in range(0, len(events), per_s):
            began = time.monotonic()
            refreshed += await self._refresh_all(events[first : first + per_s])
            if first + per_s < len(events):
                await asyncio.sleep(began + 1.0 - time.monotonic())
        return refreshed

    async def _refresh_all(self, events: list[OutboxEvent]) -> list[OutboxEvent]:
        """`events` refreshed (`StatusService.refresh`), a few at a time."""
        limit = asyncio.Semaphore(_RECONCILE_CONCURRENCY)

        async def check(event: OutboxEvent) -> OutboxEvent:
            async with limit:
                return await self._status.refresh(event)

        return list(await asyncio.gather(*(check(e) for e in events)))
