"""Status changes, watched once per server process and fanned out to every watcher.

One change feed per process, whatever the number of watchers:
- a poller reads the status records whose `updated_at` moved (only while someone watches),
  so MongoDB sees the same query rate for one watcher or a thousand. It looks when woken
  (`wake()`: a relay or another server said it wrote a change, over UDP), at most once per
  `poll_min_gap_s`, and otherwise only every `poll_interval_s`, the safety net for lost
  wake-ups: a watched stack with nothing happening costs no queries between those;
- the events that single-event watchers follow are checked for their result often
  (`result_check_interval_s`): one storage request per watched event, however many watch it;
- a slower reconcile checks every event still waiting for a result, so listings and
  all-events watchers learn of results nobody was watching for.
This process's own changes (an upload's new record, a result it marks ready) reach its
watchers at once (`publish`), without a query; the poller brings the relays' and the other
servers' changes, and each change is offered once whichever way it comes. (MinIO bucket
notifications would be the natural fast path for results; docs/status.md says why they are
polled instead.) The three loops run under the process's Supervisor: a round that raises
anything is logged, counted and retried, so the feed never ends silently.

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
from ..domain import OutboxEvent
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
# An event still waiting is checked again after an interval that doubles from the reconcile
# interval up to this: checking every waiting event every round cost an idle server with 600
# of them (no detection runner) 2.4 % of a core, most of its idle CPU.
_RECHECK_MAX_S = 300.0
# What `WatchHub.subscribe` refuses, each counted in `WatchHub.refusals`.
WATCH_REFUSAL_REASONS = (errors.TooManyWatchers.reason, errors.TooManyClientWatchers.reason)


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
    ) -> None:
        self._records = records
        self._status = status
        self._supervisor = supervisor
        self._poll_interval_s = poll_interval_s
        self._poll_min_gap_s = poll_min_gap_s
        self._woken = asyncio.Event()  # a change was announced since the last poll began
        self._result_check_interval_s = result_check_interval_s
        self._reconcile_interval_s = reconcile_interval_s
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
        self._seen: dict[tuple[str, datetime], None] = {}
        self._cursor: datetime | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Waiting events the reconcile checked: event id -> (next check, interval), monotonic.
        self._rechecks: dict[str, tuple[float, float]] = {}
        self.polls = 0  # status record queries made by the poller (for tests and metrics)

    @property
    def watchers(self) -> int:
        return len(self._subscriptions)

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
        """Offer a change to every watcher, once: the poller and this process's own writes
        (`on_changed` of the status service, `on_recorded` of the outbox) may both bring it."""
        if not self._subscriptions:
            return  # nobody to tell; the poller starts afresh when someone watches
        key = (event.event_id, event.updated_at)
        if key in self._seen:
            return
        self._seen[key] = None
        if event.event_id in self._tracked:
            self.track(event)
        for subscription in self._subscriptions:
            subscription.offer(event)

    def wake(self) -> None:
        """A status change was written (here or elsewhere): look soon, if anyone watches.
        Never blocks; a wake-up is a hint, and one lost costs latency, never a change."""
        self._woken.set()

    def start(self) -> None:
        spawn = self._supervisor.spawn
        self._tasks += [
            spawn("watch-poller", self._poll_round),
            spawn("result-reconcile", self._reconcile_round),
            spawn("result-check-watched", self._check_watched_round),
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
        self._woken.clear()  # from here on, a wake-up means: look again
        began = time.monotonic()
        if await self.poll_once():
            return 0.0  # a full batch: there is more now
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
        # Forget what the look-back window no longer reaches.
        horizon = self._cursor - 2 * _OVERLAP
        for key in [k for k in self._seen if k[1] < horizon]:
            del self._seen[key]
        return len(changed) == _POLL_BATCH

    # --- results in storage --------------------------------------------------------------

    async def _check_watched_round(self) -> float:
        await self._watched.wait()
        await self.check_watched_once()
        return self._result_check_interval_s

    async def check_watched_once(self) -> None:
        """Look for the results of the events someone watches and that are not ready."""
        waiting = [e for e in self._tracked.values() if e.ready_at is None]
        await self._refresh_all(waiting)

    async def _reconcile_round(self) -> float:
        await self.reconcile_once()
        return self._reconcile_interval_s

    async def reconcile_once(self) -> None:
        """Check storage for the results of events still waiting for one: each at once when
        first seen, then again after an interval that doubles from the reconcile interval up
        to _RECHECK_MAX_S (a result comes soon after its upload or late; watched events are
        checked every result_check_interval_s meanwhile, and GetStatus checks on demand)."""
        waiting = await self._records.unready(limit=_RECONCILE_BATCH)
        now = time.monotonic()
        due = [e for e in waiting if self._rechecks.get(e.event_id, (0.0, 0.0))[0] <= now]
        await self._refresh_all(due)
        still = {e.event_id for e in waiting}
        rechecks = {k: v for k, v in self._rechecks.items() if k in still}
        longest = max(_RECHECK_MAX_S, self._reconcile_interval_s)
        for event in due:
            previous = rechecks.get(event.event_id, (0.0, self._reconcile_interval_s / 2))[1]
            interval = min(2 * previous, longest)
            rechecks[event.event_id] = (now + interval, interval)
        self._rechecks = rechecks

    async def _refresh_all(self, events: list[OutboxEvent]) -> None:
        limit = asyncio.Semaphore(_RECONCILE_CONCURRENCY)

        async def check(event: OutboxEvent) -> None:
            async with limit:
                await self._status.refresh(event)

        await asyncio.gather(*(check(e) for e in events))
