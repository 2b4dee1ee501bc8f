"""The upload rules on their own: the bucket, the filename, the start of a video as it arrives
in pieces."""

from __future__ import annotations

import unicodedata

import pytest

from checkout_server import errors
from checkout_server.domain import UploadRequest
from checkout_server.rules import (
    FTYP_HEADER_BYTES,
    VideoHead,
    bucket_of,
    check_declared,
    check_received,
)
from checkout_server.upload.limits import UploadLimits
from tests.helpers import has_cyrillic, mp4_bytes

ALLOWED = frozenset({"videos", "archive"})


def test_a_bucket_is_the_named_one_or_the_default_and_allowed() -> None:
    assert bucket_of("", default="videos", allowed=ALLOWED) == "videos"
    assert bucket_of("archive", default="videos", allowed=ALLOWED) == "archive"
    with pytest.raises(errors.BucketNotAllowed) as caught:
        bucket_of("x" * 100, default="videos", allowed=ALLOWED)
    assert caught.value.metadata == {"bucket": "x" * 64}


# Names people give their files, in any script, with emoji and punctuation.
HONEST_NAMES = [
    "clip.mp4",
    "видео 🎬.mp4",
    "Ёлка — 31.12.mp4",
    "監視カメラ_入口.mp4",
    "收银台 2 号.mp4",
    "كاميرا.mp4",  # right-to-left letters are text, not controls
    "קופה.mp4",
    "café (1) [copy] {x}.mp4",
    "e\u0301.mp4",  # a combining accent (Mn)
    "🫠 hand\ufe0f.mp4",  # a variation selector (Mn)
    "\U0001fae8.mp4",  # an emoji newer than some Unicode databases: unassigned there, passes
    "a" * 255,
]

# Characters that hide, reorder or break what a person reads: (name, character, category).
REFUSED = [
    ("right-to-left override", "\u202e", "Cf"),
    ("left-to-right override", "\u202d", "Cf"),
    ("right-to-left embedding", "\u202b", "Cf"),
    ("pop directional formatting", "\u202c", "Cf"),
    ("left-to-right isolate", "\u2066", "Cf"),
    ("right-to-left isolate", "\u2067", "Cf"),
    ("first strong isolate", "\u2068", "Cf"),
    ("pop directional isolate", "\u2069", "Cf"),
    ("right-to-left mark", "\u200f", "Cf"),
    ("arabic letter mark", "\u061c", "Cf"),
    ("zero width space", "\u200b", "Cf"),
    ("zero width non-joiner", "\u200c", "Cf"),
    ("zero width joiner", "\u200d", "Cf"),
    ("word joiner", "\u2060", "Cf"),
    ("byte order mark", "\ufeff", "Cf"),
    ("soft hyphen", "\u00ad", "Cf"),
    ("tag character", "\U000e0041", "Cf"),
    ("line separator", "\u2028", "Zl"),
    ("paragraph separator", "\u2029", "Zp"),
    ("private use", "\ue000", "Co"),
    ("surrogate", "\ud800", "Cs"),
    ("null", "\x00", "Cc"),
    ("bell", "\x07", "Cc"),
    ("newline", "\n", "Cc"),
    ("delete", "\x7f", "Cc"),
    ("next line (C1)", "\x85", "Cc"),
]


@pytest.mark.parametrize("name", HONEST_NAMES)
def test_a_filename_may_be_in_any_script_with_emoji(name: str) -> None:
    check_declared(UploadRequest(filename=name), max_bytes=100)


@pytest.mark.parametrize(
    ("character", "category"), [(c, k) for _, c, k in REFUSED], ids=[n for n, _, _ in REFUSED]
)
def test_a_filename_with_a_character_that_hides_or_reorders_text_is_refused(
    character: str, category: str
) -> None:
    assert unicodedata.category(character) == category  # the rule is by category
    for name in (f"{character}clip.mp4", f"clip{character}.mp4", f"видео 🎬{character}"):
        with pytest.raises(errors.InvalidFilename) as caught:
            check_declared(UploadRequest(filename=name), max_bytes=100)
        assert caught.value.reason == "INVALID_FILENAME"
        assert has_cyrillic(caught.value.text)
        assert f"U+{ord(character):04X}" in caught.value.text  # its sender can find it


def test_a_reversed_extension_is_refused_where_every_upload_is_checked() -> None:
    # "clip\u202e4pm.exe" shows as "clipexe.mp4": UploadVideo, REST and resumable sessions
    # all check their metadata through UploadLimits.check.
    limits = UploadLimits(
        default_bucket="videos", allowed_buckets=ALLOWED, max_bytes=100, part_bytes=10
    )
    assert limits.check(UploadRequest(filename="видео 🎬.mp4")) == "videos"
    with pytest.raises(errors.InvalidFilename) as caught:
        limits.check(UploadRequest(filename="clip\u202e4pm.exe"))
    assert (
        caught.value.text
        == "Недопустимое имя файла: содержит невидимый символ форматирования U+202E"
    )


def test_a_filename_over_255_characters_is_refused() -> None:
    with pytest.raises(errors.InvalidFilename):
        check_declared(UploadRequest(filename="a" * 256), max_bytes=100)


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
