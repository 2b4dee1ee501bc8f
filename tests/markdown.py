"""Reading the project's Markdown pages as GitHub renders them: headings and their anchors,
sections, fenced blocks and relative links. Tests use it to run the shell blocks the docs show
(the grpcurl cookbook, the resumable curl walk-through) and to check that every link resolves.

Only what these pages use: ATX headings (`## Title`), fenced code blocks (``` or ~~~), inline
links and images (`[text](target)`), HTML comments. Nothing inside a code block or a comment
counts as a heading or a link."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
# [text](target) or ![alt](target), with an optional "title"; text without nested brackets.
_LINK = re.compile(r"!?\[([^\[\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    line: int  # 0-based index into the page's lines


@dataclass(frozen=True)
class Link:
    page: Path
    target: str
    line: int  # 1-based, for messages

    def __str__(self) -> str:
        return f"{self.page.name}:{self.line}: {self.target}"


def _outside_code(lines: list[str]) -> list[bool]:
    """For each line: True when it is prose, False inside (or on the fence of) a code block."""
    prose: list[bool] = []
    fence = ""
    for line in lines:
        match = _FENCE.match(line)
        if fence:
            prose.append(False)
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
        elif match:
            prose.append(False)
            fence = match.group(1)
        else:
            prose.append(True)
    return prose


def _blank_comments(text: str) -> str:
    """HTML comments replaced by as many newlines, so line numbers stay right."""
    return _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def headings(text: str) -> list[Heading]:
    lines = _blank_comments(text).split("\n")
    found = []
    for index, (line, prose) in enumerate(zip(lines, _outside_code(lines), strict=True)):
        match = _HEADING.match(line) if prose else None
        if match:
            found.append(Heading(len(match.group(1)), match.group(2), index))
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text in lower case, without anything but
    letters, digits, `_`, `-` and spaces, spaces turned into `-`."""
    rendered = _LINK.sub(r"\1", heading)
    rendered = re.sub(r"<[^>]+>", "", rendered)
    rendered = re.sub(r"[^\w\- ]", "", rendered.lower())
    return rendered.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets `-1`, `-2`, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in headings(text):
        base = slug(heading.text)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def section(path: Path, title: str) -> str:
    """The text under the heading `title` (any level), up to the next heading of the same or a
    higher level: its subsections are part of it. Fails when the page has no such heading, or
    more than one."""
    text = path.read_text()
    all_headings = headings(text)
    matches = [h for h in all_headings if h.text == title]
    assert len(matches) == 1, f"{path.name}: {len(matches)} headings {title!r}"
    start = matches[0]
    end = next(
        (h.line for h in all_headings if h.line > start.line and h.level <= start.level), None
    )
    lines = text.split("\n")
    return "\n".join(lines[start.line + 1 : end])


def sh_blocks(path: Path, title: str) -> list[str]:
    """The ```sh blocks of a section, in order; fails when it has none."""
    blocks = re.findall(r"^```sh\n(.*?)^```", section(path, title), flags=re.DOTALL | re.M)
    assert blocks, f"{path.name}, {title!r}: no sh blocks"
    return blocks


def links(path: Path) -> list[Link]:
    """Every link and image of a page outside code and comments, in order."""
    lines = _blank_comments(path.read_text()).split("\n")
    found = []
    for number, (line, prose) in enumerate(zip(lines, _outside_code(lines), strict=True), 1):
        if prose:
            for match in _LINK.finditer(_CODE_SPAN.sub("", line)):
                found.append(Link(path, match.group(2), number))
    return found


def broken(link: Link) -> str | None:
    """Why a relative link does not resolve (None when it does, or when it is not relative):
    no such file, or for a Markdown file no heading with that anchor."""
    target = link.target
    if not target or _SCHEME.match(target):
        return None
    if target.startswith("/"):
        return "absolute: links must be relative to the page"
    path_part, _, anchor = target.partition("#")
    file = (link.page.parent / unquote(path_part)).resolve() if path_part else link.page
    if not file.exists():
        return f"no file {path_part}"
    if anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
        return f"no heading #{anchor} in {file.name}"
    return None
