"""Detection on frames larger than a bound runs on a scaled-down copy: the cost of both
detectors grows with the pixels, and faces or people big enough to matter survive it."""

from __future__ import annotations


def detection_size(width: int, height: int, max_side_px: int) -> tuple[int, int] | None:
    """The (width, height) to detect at, keeping the aspect ratio, or None when the frame is
    within `max_side_px` already (0: no bound)."""
    longest = max(width, height)
    if max_side_px <= 0 or longest <= max_side_px:
        return None
    scale = max_side_px / longest
    return max(round(width * scale), 1), max(round(height * scale), 1)
