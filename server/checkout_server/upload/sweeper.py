"""The upload sweeper: what expired sessions and crashed servers leave in storage.

Each round, on every server at once (everything it does is idempotent or decided by a unique
insert, so sweepers never need to agree):

1. Sessions past their TTL: the terminal marker `expired` is inserted (the first marker wins,
   so a session that began finishing is finished instead, for its client), then the session's
   multipart upload is aborted and its facts removed; later calls get NOT_FOUND.
2. Multipart uploads under `input/` that no session has recorded and that are older than the
   longest upload the limits allow (UPLOAD_MAX_DURATION_S: an UploadVideo stream is cut after
   it) are aborted: a crashed server's plain uploads. A live session's upload is never one of
   them, however old (its id is recorded before its first part is stored); an upload not yet
   recorded is seconds old.
3. Complete objects under `input/` that no event names, older than UPLOAD_ORPHAN_OBJECT_AGE_S,
   are removed: what a server killed between an object's completion (CompleteMultipartUpload,
   or the one PUT of a small video) and the insert of its outbox message leaves, and an upload
   whose insert the database never answered (upload/pipeline.py keeps its object then).
   Incremental: one page (ORPHAN_PAGE keys) per bucket per round, going on after the last
   round's last key and starting over at the end, so a round costs the same whatever the
   bucket holds. For a page's objects older than the age, the outbox is asked once which video
   ids (a key's stem) an event names; the rest, once, which a stored resumable session names.
   An object is removed only when the database answered that neither does; any error keeps
   the page for the next round. A video an event was found for is not asked about again for
   NAMED_TTL_S (24 h; about NAMED_MAX remembered), so a pass over a bucket whose videos all
   have their events costs the database nothing.

   Why this never removes a video that is still going to get its event:
   - an UploadVideo's object exists only after `finish`; its event is inserted at once, and
     the upload has decided within LOST_INSERT_CHECK_S plus its database calls' timeouts
     (config.py checks that the age is well above that; the default is 1 h);
   - a resumable session's object (complete after a crash, its event not written) is
     finished by its client's next call or at expiry, however old: its session names it until
     then, and sessions are removed only once the event exists or the session is discarded;
   - a re-request names the video of an existing object: any event of the video keeps it.
   Cleanup deletes the objects under `input/` first, then every event: an object an upload
   completed in between has no event left, and removing it is what Cleanup asked for (as is
   an object whose delete failed there: it goes once its video is asked about again, within
   NAMED_TTL_S). The one race left is a re-request (of a video with no event of its own)
   between the question and the removal: it would get an event without its object.

MinIO's own stale-upload expiry (24 h by default, counted from the upload's start) stays the
last backstop for multipart uploads; the session TTL is kept below it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from checkout_common import input_key as input_keys

from ..ports import MultipartStorage, ObjectStorage, Outbox, UploadSessionStore
from .resumable import ResumableUploads

log = logging.getLogger(__name__)

INPUT_PREFIX = input_keys.PREFIX
VIDEO_SUFFIX = input_keys.SUFFIX
EXPIRED_BATCH = 100
ORPHAN_PAGE = 1000  # keys listed per bucket per round (one S3 ListObjectsV2 page)
# Videos an event was found for are not asked about again for this long: once a video has an
# event only Cleanup removes it (with the objects, first), and FerretDB 1.24 reads both
# collections whole for every question (docs/performance.md). At most NAMED_MAX are
# remembered; beyond, all are forgotten (asked about again, which is always safe).
NAMED_TTL_S = 24 * 3600.0
NAMED_MAX = 100_000


def _utcnow() -> datetime:
    return datetime.now(UTC)


class UploadSweeper:
    """One `round` at a time under the process's Supervisor."""

    def __init__(
        self,
        *,
        resumable: ResumableUploads,
        sessions: UploadSessionStore,
        storage: MultipartStorage,
        buckets: frozenset[str],
        orphan_age_s: float,
        interval_s: float,
        objects: EventlessObjects | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """`objects` sweeps complete objects without an event (none: not swept)."""
        self._objects = objects
        self._resumable = resumable
        self._sessions = sessions
        self._storage = storage
        self._buckets = sorted(buckets)
        self._orphan_age = timedelta(seconds=orphan_age_s)
        self._interval_s = interval_s
        self._clock = clock
        self.expired_total = 0
        self.orphans_aborted_total = 0

    async def round(self) -> float:
        """Sweep once; returns the pause before the next round."""
        while True:
            expired = await self._sessions.expired(self._clock(), limit=EXPIRED_BATCH)
            for session in expired:
                if await self._resumable.expire(session):
                    self.expired_total += 1
            if len(expired) < EXPIRED_BATCH:
                break
        for bucket in self._buckets:
            await self._abort_orphans(bucket)
        if self._objects is not None:
            for bucket in self._buckets:
                await self._objects.sweep(bucket)
        return self._interval_s

    @property
    def orphan_objects_removed_total(self) -> int:
        return 0 if self._objects is None else self._objects.removed_total

    async def _abort_orphans(self, bucket: str) -> None:
        cutoff = self._clock() - self._orphan_age
        old = [
            u
            for u in await self._storage.list_multipart(bucket, INPUT_PREFIX)
            if u.initiated < cutoff
        ]
        if not old:
            return
        live = await self._sessions.open_multipart_ids([u.upload_id for u in old])
        for upload in old:
            if upload.upload_id in live:
                continue
            await self._storage.abort_multipart(bucket, upload.key, upload.upload_id)
            self.orphans_aborted_total += 1
            log.info(
                "aborted an orphaned multipart upload",
                extra={
                    "bucket": bucket,
                    "key": upload.key,
                    "initiated": upload.initiated.isoformat(),
                },
            )


def video_id_of(key: str) -> str | None:
    """The video id of an upload's key (`input/{video_id}.mp4`), or None for any other."""
    if not key.startswith(INPUT_PREFIX) or not key.endswith(VIDEO_SUFFIX):
        return None
    stem = key[len(INPUT_PREFIX) : -len(VIDEO_SUFFIX)]
    return stem if stem and "/" not in stem else None


class EventlessObjects:
    """Step 3 of the round: complete objects under `input/` that no event names (module
    docstring). Keeps, per bucket, the key the next page starts after, and the videos an event
    was found for (NAMED_TTL_S, NAMED_MAX)."""

    def __init__(
        self,
        *,
        storage: ObjectStorage,
        outbox: Outbox,
        sessions: UploadSessionStore,
        min_age_s: float,
        page: int = ORPHAN_PAGE,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._storage = storage
        self._outbox = outbox
        self._sessions = sessions
        self._min_age = timedelta(seconds=min_age_s)
        self._page = page
        self._clock = clock
        self._after: dict[str, str] = {}
        self._named: dict[str, set[str]] = {}
        self._named_since: dict[str, datetime] = {}
        self.removed_total = 0

    async def sweep(self, bucket: str) -> None:
        """One page of `bucket`: its old objects without an event are removed. The next call
        goes on after this page only once it is decided (an error repeats it next round)."""
        start_after = self._after.get(bucket, "")
        page = await self._storage.list_page(
            bucket, INPUT_PREFIX, start_after=start_after, limit=self._page
        )
        now = self._clock()
        known = self._known(bucket, now)
        old = {
            video_id: found
            for found in page
            if found.last_modified <= now - self._min_age
            and (video_id := video_id_of(found.key)) is not None
            and video_id not in known
        }
        if old:
            named = await self._outbox.videos_with_events(sorted(old))
            self._remember(bucket, named, now)
            unnamed = sorted(set(old) - named)
            if unnamed:
                unnamed = sorted(set(unnamed) - await self._sessions.videos_with_sessions(unnamed))
            for video_id in unnamed:
                found = old[video_id]
                await self._storage.delete(bucket, found.key)
                self.removed_total += 1
                log.warning(
                    "removed a complete object that no event names",
                    extra={
                        "bucket": bucket,
                        "key": found.key,
                        "size_bytes": found.size_bytes,
                        "age_s": round((now - found.last_modified).total_seconds()),
                    },
                )
        # A full page: the next one follows it; a short one reached the end: start over.
        self._after[bucket] = page[-1].key if len(page) == self._page else ""

    def _known(self, bucket: str, now: datetime) -> set[str]:
        """The videos of `bucket` an event was found for, forgotten NAMED_TTL_S after they
        were first collected."""
        since = self._named_since.setdefault(bucket, now)
        if now - since >= timedelta(seconds=NAMED_TTL_S):
            self._forget(bucket, now)
        return self._named.setdefault(bucket, set())

    def _remember(self, bucket: str, named: set[str], now: datetime) -> None:
        if sum(len(ids) for ids in self._named.values()) + len(named) > NAMED_MAX:
            for each in list(self._named):
                self._forget(each, now)
        self._named.setdefault(bucket, set()).update(named)

    def _forget(self, bucket: str, now: datetime) -> None:
        self._named[bucket] = set()
        self._named_since[bucket] = now
