"""The server's and the runner's log lines: one format written by two copies of the formatters
(each module's docstring says why there are two), the server's adding its request id."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from checkout_runner import logs as runner_logs
from checkout_server import logs as server_logs

FORMATTERS = [
    pytest.param(server_logs.JsonFormatter, runner_logs.JsonFormatter, id="json"),
    pytest.param(server_logs.ConsoleFormatter, runner_logs.ConsoleFormatter, id="console"),
]


def record(*, failed: bool = False) -> logging.LogRecord:
    exc_info = None
    if failed:
        try:
            raise ValueError("broken")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("checkout.x", logging.WARNING, __file__, 1, "a %s", ("b",), exc_info)
    made.event_id = "e-1"
    made.attempt = 2
    return made


@pytest.mark.parametrize(("server", "runner"), FORMATTERS)
@pytest.mark.parametrize("failed", [False, True], ids=["plain", "exception"])
def test_both_copies_write_the_same_line(
    server: type[logging.Formatter], runner: type[logging.Formatter], failed: bool
) -> None:
    same = record(failed=failed)  # one record: the same time stamp
    line = server().format(same)
    assert line == runner().format(same)
    assert "a b" in line
    assert "event_id" in line
    assert ("ValueError: broken" in line) == failed


def test_the_json_line_has_its_fields() -> None:
    line = json.loads(server_logs.JsonFormatter().format(record()))
    assert line.pop("ts").endswith("+00:00")
    assert line == {
        "level": "warning",
        "logger": "checkout.x",
        "msg": "a b",
        "event_id": "e-1",
        "attempt": 2,
    }


def test_the_server_adds_the_request_id_of_its_call() -> None:
    token = server_logs.request_id_var.set("r-7")
    try:
        line = json.loads(server_logs.JsonFormatter().format(record()))
        console = server_logs.ConsoleFormatter().format(record())
    finally:
        server_logs.request_id_var.reset(token)
    assert line["request_id"] == "r-7"
    assert "request_id=r-7" in console
    assert "request_id" not in json.loads(runner_logs.JsonFormatter().format(record()))
