"""docs/runner.md's settings and failure-reason tables are the code's (tools/gen_runner_docs.py):
a setting or a reason added, removed or reworded without `make docs` fails here."""

from __future__ import annotations

import pytest

from checkout_runner.config import RunnerSettings
from checkout_runner.errors import FAILURE_RESULTS
from tools.gen_runner_docs import DOC, render

pytestmark = pytest.mark.timeout(10)


def test_the_tables_in_the_runner_docs_are_current() -> None:
    text = DOC.read_text()
    assert render(text) == text, "docs/runner.md is stale: run `make docs`"


def test_every_setting_and_reason_has_its_row() -> None:
    text = DOC.read_text()
    for name in RunnerSettings.model_fields:
        assert f"| `{name.upper()}` [" in text
    for cls in FAILURE_RESULTS:
        assert f"| `{cls.reason}` |" in text


def test_a_stale_table_is_rewritten() -> None:
    text = DOC.read_text()
    stale = text.replace("| `RUNNER_MAX_FPS` [`240`]", "| `RUNNER_MAX_FPS` [`30`]")
    assert stale != text
    assert render(stale) == text
