"""Logging set-up: one line per event, JSON when not on a terminal, readable on one.

Context (the request id of the current call, and whatever `extra=` a call passes, such as
`event_id`) is added to every line.

The detection runner has a copy of the formatters (runner/checkout_runner/logs.py), on
purpose: the runner is a distribution of its own that shares no code with the server or the
SDK (import-linter's runner-apart; their contract is the Kafka envelope and the result JSON),
and no distribution of ours is installed under both. A shared home would be checkout-client
(bringing grpcio, protobuf and rich into the runner's image, and logging into the package of
the generated stubs) or a third distribution to build and ship everywhere, both worse than
forty lines twice. What differs is the server's: the request id, the quieter pymongo and
asyncio. Both write the same line (ts, level, logger, msg, the extra fields, exc), which
tests/unit/test_logs.py checks.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# The id of the call being handled (set by the API's interceptor), for every log line.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    request_id = request_id_var.get()
    if request_id:
        fields.setdefault("request_id", request_id)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            text = f"{text}  {extras}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def configure(level: str = "INFO", fmt: str = "") -> None:
    """Route all logging to stderr; `fmt` is "json", "console" or "" (auto by terminal)."""
    use_json = fmt == "json" or (fmt != "console" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty third-party loggers stay at WARNING unless asked for DEBUG.
    if level != "DEBUG":
        for name in ("aiokafka", "pymongo", "asyncio"):
            logging.getLogger(name).setLevel(logging.WARNING)
