"""What an upload may be: the rules that UploadVideo (gRPC and REST) and resumable sessions
check, and the bucket rule that a re-request (CreateRequest) checks too. Each raises the
error a client breaks it with (INVALID_ARGUMENT or FAILED_PRECONDITION, said in Russian).

Checked before the bytes: the bucket (`bucket_of`), then the filename, the declared size,
SHA-256 and idempotency key (`check_declared`). While they arrive: the size so far
(`check_received`) and the first bytes (`VideoHead`: an ISO-BMFF `ftyp` box). At the end of
an UploadVideo stream: `check_complete`.
"""

from __future__ import annotations

import re
import unicodedata

from . import errors
from .domain import OutboxEvent, UploadRequest

MAX_FILENAME_CHARS = 255
# An ISO-BMFF file (MP4, MOV, 3GP...) starts with a box header: 4-byte size, then `ftyp`,
# then a 4-byte major brand and a 4-byte minor version.
FTYP_HEADER_BYTES = 16
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
# What a filename may not hold, by Unicode general category: characters that hide or reorder
# what a person reads (bidi controls such as U+202E, zero-width ones, soft hyphen) or that
# break a line, render per font (private use) or are no text (surrogates). Unassigned code
# points pass: an emoji newer than this Python's Unicode database is one of them.
_REFUSED_IN_FILENAME = {
    "Cc": "управляющий символ",
    "Cf": "невидимый символ форматирования",
    "Zl": "разделитель строк",
    "Zp": "разделитель абзацев",
    "Cs": "суррогатный код",
    "Co": "символ из области для частного использования",
}


def bucket_of(requested: str, *, default: str, allowed: frozenset[str]) -> str:
    """The bucket a request names (`default` when it names none), or BucketNotAllowed."""
    bucket = requested or default
    if bucket not in allowed:
        raise errors.BucketNotAllowed(bucket[:64], bucket=bucket[:64])
    return bucket


def check_declared(request: UploadRequest, *, max_bytes: int) -> None:
    """What a client declares before its bytes: the filename, the size (0: unknown), the
    SHA-256 (lowercase hex, or none) and the idempotency key."""
    if len(request.filename) > MAX_FILENAME_CHARS:
        raise errors.InvalidFilename(f"длиннее {MAX_FILENAME_CHARS} символов")
    _check_characters(request.filename)
    if request.size_bytes < 0:
        raise errors.InvalidSize()
    if request.size_bytes > max_bytes:
        raise _too_large(max_bytes)
    if request.sha256 and not _SHA256_HEX.fullmatch(request.sha256):
        raise errors.InvalidChecksum()
    if request.idempotency_key and not _IDEMPOTENCY_KEY.fullmatch(request.idempotency_key):
        raise errors.InvalidIdempotencyKey("1–128 печатных символов ASCII без пробелов")


def _check_characters(filename: str) -> None:
    """Any script and emoji, but none of the characters of _REFUSED_IN_FILENAME: the first
    one is named with its code point, so its sender can find it."""
    for c in filename:
        kind = _REFUSED_IN_FILENAME.get(unicodedata.category(c))
        if kind is not None:
            raise errors.InvalidFilename(f"содержит {kind} U+{ord(c):04X}")


def check_received(received: int, *, declared: int, max_bytes: int) -> None:
    """After each chunk: the `received` bytes so far are within `max_bytes` and within the
    `declared` size (0: none declared)."""
    if received > max_bytes:
        raise _too_large(max_bytes)
    if declared and received > declared:
        raise errors.SizeMismatch(
            f"заявлено {declared} байт, получено больше", declared=str(declared)
        )


def check_complete(received: int, *, declared: int, head: VideoHead) -> None:
    """At the end of a stream: it was not empty, it began as a video, and it had the
    `declared` size (0: none declared)."""
    if received == 0:
        raise errors.EmptyFile()
    head.check_end()
    if declared and received != declared:
        raise errors.SizeMismatch(
            f"заявлено {declared} байт, получено {received}",
            declared=str(declared),
            received=str(received),
        )


def check_same_file(request: UploadRequest, existing: OutboxEvent) -> None:
    """A reused idempotency key must describe the same file as the first upload."""
    if (request.size_bytes and request.size_bytes != existing.size_bytes) or (
        request.sha256 and request.sha256 != existing.sha256
    ):
        raise errors.IdempotencyKeyReused(event_id=existing.event_id)


class VideoHead:
    """The first FTYP_HEADER_BYTES of a file as they arrive, checked to be an ISO-BMFF
    `ftyp` box header (else NotAVideo) as soon as they are all in."""

    def __init__(self) -> None:
        self._head = b""

    def add(self, offset: int, data: bytes, *, last: bool = False) -> None:
        """The file's bytes from `offset`, in order; `last`: the file ends with them (a file
        shorter than the header is then refused at once)."""
        if offset >= FTYP_HEADER_BYTES:
            return
        self._head += data[: FTYP_HEADER_BYTES - offset]
        if len(self._head) >= FTYP_HEADER_BYTES or last:
            _check_ftyp(self._head)

    def check_end(self) -> None:
        """The file has ended: one shorter than the header is no video."""
        if len(self._head) < FTYP_HEADER_BYTES:
            _check_ftyp(self._head)


def _check_ftyp(head: bytes) -> None:
    if len(head) < FTYP_HEADER_BYTES or head[4:8] != b"ftyp":
        raise errors.NotAVideo()
    box_size = int.from_bytes(head[0:4], "big")
    if box_size not in (0, 1) and box_size < FTYP_HEADER_BYTES:
        raise errors.NotAVideo()


def _too_large(max_bytes: int) -> errors.FileTooLarge:
    return errors.FileTooLarge(f"больше {max_bytes} байт", max_bytes=str(max_bytes))
