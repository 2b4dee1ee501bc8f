"""Where the detection runner writes an event's result, and where the server looks for it
(RESULT_KEY_TEMPLATE, in the bucket of the video; docs/status.md, "Contract for the
detection runner"). Both processes check the template with `check_template` at start-up,
so one environment never has one of them start and the other refuse it.
"""

from __future__ import annotations

DEFAULT_TEMPLATE = "output/{video_id}.json"
FIELDS = ("{video_id}", "{event_id}")


def check_template(template: str) -> str:
    """`template` if results can go there; ValueError naming RESULT_KEY_TEMPLATE if not. It
    needs a folder before its first field (the server's cleanup and listings work on it) and
    the video's or the event's id (or every result would share one key), and must format with
    those two fields alone."""
    head = template.split("{", 1)[0]
    if "/" not in head or not any(field in template for field in FIELDS):
        raise ValueError(
            "RESULT_KEY_TEMPLATE needs a folder and {video_id} or {event_id}, "
            "e.g. output/{video_id}.json"
        )
    try:  # another field ({nope}) or a stray brace would fail at the first result
        result_key(template, video_id="v", event_id="e")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"RESULT_KEY_TEMPLATE: {exc!r}") from None
    return template


def result_key(template: str, *, video_id: str, event_id: str) -> str:
    """The key of an event's result (a template `check_template` took)."""
    return template.format(video_id=video_id, event_id=event_id)


def result_prefix(template: str) -> str:
    """The fixed folder of result keys (`output/` for `output/{video_id}.json`)."""
    head = template.split("{", 1)[0]
    return head[: head.rfind("/") + 1]
