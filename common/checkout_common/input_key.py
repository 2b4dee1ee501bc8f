"""Where the server stores an uploaded video in its bucket: `input/{video_id}.mp4`. The one
rule for both processes: the server stores each upload there (and its sweeper reads video
ids back from such keys), and the detection runner reads no other object for an event than
the key this makes of the event's own video id (docs/runner.md, "Hostile records").
"""

from __future__ import annotations

PREFIX = "input/"
SUFFIX = ".mp4"


def input_key(video_id: str) -> str:
    """The key of the video `video_id` in its bucket."""
    return f"{PREFIX}{video_id}{SUFFIX}"
