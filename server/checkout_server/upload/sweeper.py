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

MinIO's own stale-upload expiry (24 h by default, counted from the upload's start) stays the
last backstop; the session TTL is kept below it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ..ports import MultipartStorage, UploadSessionStore
from .resumable import ResumableUploads

log = logging.getLogger(__name__)

INPUT_PREFIX = "input/"
EXPIRED_BATCH = 100


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
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
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
        return self._interval_s

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
