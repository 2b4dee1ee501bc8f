"""The limits of a process's uploads, from its settings: one frozen copy that the wiring
builds and the upload pipeline, the resumable uploads and their admission all read."""

from __future__ import annotations

from dataclasses import dataclass

from ..domain import UploadRequest
from ..rules import bucket_of, check_declared


@dataclass(frozen=True, kw_only=True)
class UploadLimits:
    # The bucket of a request that names none, and the buckets a request may name.
    default_bucket: str
    allowed_buckets: frozenset[str]
    # The largest file, declared or received.
    max_bytes: int
    # The storage part size (a resumable session's parts are at least this).
    part_bytes: int
    # What all uploads together may buffer; each upload holds what it buffers (two parts at
    # most: the one being collected and the one in flight).
    memory_budget_bytes: int = 256 * 1024 * 1024
    # Uploads streamed at once; one more is refused (TooManyUploads), not queued.
    max_concurrent: int = 64
    # The longest one UploadVideo stream may last (then it is cut: UPLOAD_TOO_LONG); the
    # sweeper takes an unrecorded multipart upload older than this for a crashed one.
    max_duration_s: float | None = None
    # How long a stream waits for more buffer memory while the budget is spent (then it is
    # refused: UploadMemoryBusy); None: for ever.
    memory_wait_s: float | None = 5.0
    # Streams one client (its API key's owner, or its address) may run at once.
    max_concurrent_per_client: int = 8
    # Resumable sessions one client may have open; 0: no limit.
    max_open_sessions_per_client: int = 0
    # The longest a stream may send nothing (None: no limit), and the least it must send per
    # second over each window of waiting for it (0: no minimum): else it is cut (UploadStalled).
    idle_timeout_s: float | None = None
    min_bytes_per_s: int = 0
    throughput_window_s: float = 60.0

    def check(self, request: UploadRequest) -> str:
        """The bucket of a valid request; raises the rule it breaks (rules.py), the bucket's
        first. UploadVideo and resumable sessions are checked alike."""
        bucket = bucket_of(
            request.bucket, default=self.default_bucket, allowed=self.allowed_buckets
        )
        check_declared(request, max_bytes=self.max_bytes)
        return bucket
