"""The README stays a doorway (at most 12 KiB, a link to every page of docs/), and every
relative link of the README and of docs/*.md reaches a file that exists and, for `#anchor`,
a heading of that file (GitHub's anchors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack._paths import REPO_ROOT
from tests import markdown

pytestmark = pytest.mark.timeout(10)

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def test_the_readme_is_at_most_12_kib() -> None:
    size = len(README.read_bytes())
    assert size <= 12 * 1024, f"README.md is {size} bytes: move the detail into docs/"


def test_the_readme_links_every_page_of_the_docs() -> None:
    linked = {
        (README.parent / link.target.partition("#")[0]).resolve() for link in markdown.links(README)
    }
    pages = {p.resolve() for p in DOCS.iterdir() if p.suffix in {".md", ".yaml"}}
    assert pages, "no pages in docs/"
    missing = sorted(p.name for p in pages - linked)
    assert not missing, f"README.md links no {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    problems = [
        f"{link}: {why}"
        for link in markdown.links(page)
        if (why := markdown.broken(link)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_links_and_headings_in_code_and_comments_do_not_count(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n"
        "<!-- [gone](gone.md) -->\n"
        "```sh\n# not a heading\ncat [x](nowhere.md)\n```\n\n"
        "`[code](code.md)` and [real](page.md#title)\n"
    )
    assert [link.target for link in markdown.links(page)] == ["page.md#title"]
    assert markdown.anchors(page.read_text()) == {"title"}


def test_a_missing_file_a_missing_anchor_and_an_absolute_path_are_broken(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("## Known limitations and next steps\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[a](other.md#known-limitations-and-next-steps) [b](#page) [c](https://example.org/x)\n"
        "[d](missing.md) [e](other.md#limitations) [f](#nope) [g](/etc/hosts)\n"
    )
    reasons = {link.target: markdown.broken(link) for link in markdown.links(page)}
    assert reasons == {
        "other.md#known-limitations-and-next-steps": None,
        "#page": None,
        "https://example.org/x": None,
        "missing.md": "no file missing.md",
        "other.md#limitations": "no heading #limitations in other.md",
        "#nope": "no heading #nope in page.md",
        "/etc/hosts": "absolute: links must be relative to the page",
    }


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Uploading (`UploadVideo`)", "uploading-uploadvideo"),
        (
            "Soak: the whole system under load and faults (`make soak`)",
            "soak-the-whole-system-under-load-and-faults-make-soak",
        ),
        (
            "Configuration (besides `MONGO_*`, `KAFKA_TOPIC`)",
            "configuration-besides-mongo_-kafka_topic",
        ),
        ("What the engineer's tests — cover", "what-the-engineers-tests--cover"),
        ("Основные функции", "основные-функции"),
        ("See [the runner](runner.md)", "see-the-runner"),
    ],
)
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert markdown.slug(heading) == anchor


def test_a_repeated_heading_gets_a_number() -> None:
    assert markdown.anchors("## Tests\n\n### Tests\n\n## Tests\n") == {
        "tests",
        "tests-1",
        "tests-2",
    }


def test_a_section_holds_its_subsections_and_ends_at_its_level(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "## One\n\n```sh\necho 1\n# a comment, not a heading\n```\n\n"
        "### Inside\n\n```sh\necho 2\n```\n\n"
        "## Two\n\n```sh\necho 3\n```\n"
    )
    assert markdown.sh_blocks(page, "One") == ["echo 1\n# a comment, not a heading\n", "echo 2\n"]
    with pytest.raises(AssertionError, match="0 headings 'Three'"):
        markdown.section(page, "Three")
