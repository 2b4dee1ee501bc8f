"""The upload rules on their own: the bucket, the start of a video as it arrives in pieces."""

from __future__ import annotations

import pytest

from checkout_server import errors
from checkout_server.rules import FTYP_HEADER_BYTES, VideoHead, bucket_of, check_received
from tests.helpers import mp4_bytes

ALLOWED = frozenset({"videos", "archive"})


def test_a_bucket_is_the_named_one_or_the_default_and_allowed() -> None:
    assert bucket_of("", default="videos", allowed=ALLOWED) == "videos"
    assert bucket_of("archive", default="videos", allowed=ALLOWED) == "archive"
    with pytest.raises(errors.BucketNotAllowed) as caught:
        bucket_of("x" * 100, default="videos", allowed=ALLOWED)
    assert caught.value.metadata == {"bucket": "x" * 64}


@pytest.mark.parametrize("cut", [1, 4, 8, 15, 16, 100])
def test_the_head_is_checked_once_complete_however_it_is_cut(cut: int) -> None:
    data = mp4_bytes(100)
    head = VideoHead()
    for offset in range(0, len(data), cut):
        head.add(offset, data[offset : offset + cut])
    head.check_end()

    bad = b"\x00\x00\x00\x18fty!" + data[8:]
    head = VideoHead()
    for offset in range(0, len(bad), cut):
        if offset + cut >= FTYP_HEADER_BYTES:  # the piece that completes the header
            break
        head.add(offset, bad[offset : offset + cut])
    with pytest.raises(errors.NotAVideo):
        head.add(offset, bad[offset : offset + cut])


def test_a_file_shorter_than_the_header_is_no_video() -> None:
    short = mp4_bytes(100)[: FTYP_HEADER_BYTES - 1]
    head = VideoHead()
    head.add(0, short)  # not all in yet
    with pytest.raises(errors.NotAVideo):
        head.check_end()
    with pytest.raises(errors.NotAVideo):
        VideoHead().add(0, short, last=True)


def test_bytes_past_the_header_are_not_looked_at() -> None:
    head = VideoHead()
    head.add(FTYP_HEADER_BYTES, b"anything")  # a resumed write, past the header
    head.add(5 * 1024 * 1024, b"more")


def test_the_size_so_far_is_within_the_limit_and_the_declared_size() -> None:
    check_received(10, declared=10, max_bytes=10)
    check_received(10, declared=0, max_bytes=10)
    with pytest.raises(errors.FileTooLarge):
        check_received(11, declared=0, max_bytes=10)
    with pytest.raises(errors.SizeMismatch):
        check_received(6, declared=5, max_bytes=10)
