"""The reference tables in docs/ are the code's (tools/gen_docs.py): a setting, a reason or an
error added, removed or reworded without `make docs` fails here (and `make lint`)."""

from __future__ import annotations

import dataclasses

import pytest

from checkout_runner.config import RunnerSettings
from checkout_runner.errors import FAILURE_RESULTS
from checkout_server.config import RelaySettings, ServerSettings
from tools.gen_docs import DOCS, PAGES, render, stale
from tools.render_envoy import Budgets

pytestmark = pytest.mark.timeout(10)

RUNNER = DOCS / "runner.md"
CONFIGURATION = DOCS / "configuration.md"
API = DOCS / "api.md"
RELAY = DOCS / "relay.md"


def test_every_generated_table_is_current() -> None:
    problems = stale()
    assert not problems, "\n".join(problems.values()) + "\nrun `make docs`"


def test_every_runner_setting_and_reason_has_its_row() -> None:
    text = RUNNER.read_text()
    for name in RunnerSettings.model_fields:
        assert f"| `{name.upper()}` [" in text
    for cls in FAILURE_RESULTS:
        assert f"| `{cls.reason}` |" in text


def test_every_server_and_relay_variable_has_its_row() -> None:
    text = CONFIGURATION.read_text()
    for settings in (ServerSettings, RelaySettings):
        for name in settings.model_fields:
            assert text.count(f"| `{name.upper()}` [") == 1, name
    relay = RELAY.read_text()
    for name in RelaySettings.model_fields:
        assert f"`{name.upper()}`" in relay, name


def test_a_stale_configuration_table_is_rewritten() -> None:
    text = CONFIGURATION.read_text()
    stale_text = text.replace("| `UPLOAD_MAX_BYTES` [4 GiB]", "| `UPLOAD_MAX_BYTES` [2 GiB]")
    assert stale_text != text
    assert render(CONFIGURATION, stale_text) == text


def test_a_stale_error_table_is_rewritten() -> None:
    text = API.read_text()
    stale_text = text.replace(
        "| `EMPTY_FILE` | INVALID_ARGUMENT (3) | 400 |",
        "| `EMPTY_FILE` | INVALID_ARGUMENT (3) | 422 |",
    )
    assert stale_text != text
    assert render(API, stale_text) == text


def test_a_stale_runner_table_is_rewritten() -> None:
    text = RUNNER.read_text()
    stale_text = text.replace("| `RUNNER_MAX_FPS` [`240`]", "| `RUNNER_MAX_FPS` [`30`]")
    assert stale_text != text
    assert render(RUNNER, stale_text) == text


def test_every_page_has_the_markers_of_its_tables() -> None:
    for page, tables in PAGES.items():
        text = page.read_text()
        for name in tables:
            assert text.count(f"<!-- generated: {name} -->\n") == 1, (page.name, name)
            assert text.count(f"<!-- end: {name} -->") == 1, (page.name, name)


def test_every_envoy_budget_has_its_row() -> None:
    text = (DOCS / "operations.md").read_text()
    for field in dataclasses.fields(Budgets):
        assert f"| `{field.name}` | " in text
