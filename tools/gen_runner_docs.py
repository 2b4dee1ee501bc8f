"""The reference tables of docs/runner.md, made from the runner's code so they cannot drift:
its settings (config.RunnerSettings: each field's variable, default and docstring) and the
reasons of its failure results (errors.FAILURE_RESULTS: each class's reason and docstring).

    python tools/gen_runner_docs.py          # rewrite the tables in docs/runner.md
    python tools/gen_runner_docs.py --check  # exit 1 if they are stale (tests run this)

Each table sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->`.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from checkout_runner.config import SECRETS, RunnerSettings
from checkout_runner.errors import FAILURE_RESULTS

DOC = Path(__file__).resolve().parent.parent / "docs" / "runner.md"
KiB = 1024


def _default(name: str, value: object) -> str:
    if name in SECRETS:
        return "(secret)"
    if value == "":
        return "empty"
    if name.endswith("_bytes") and isinstance(value, int):
        for unit, size in (("GiB", KiB**3), ("MiB", KiB**2), ("KiB", KiB)):
            if value >= size and value % size == 0:
                return f"{value // size} {unit}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    rows = ["| variable [default] | meaning |", "| --- | --- |"]
    for name, field in RunnerSettings.model_fields.items():
        variable = name.upper()
        meaning = _one_line(field.description or "")
        meaning = meaning.removeprefix(f"{variable}: ")
        rows.append(f"| `{variable}` [{_default(name, field.default)}] | {meaning} |")
    return "\n".join(rows)


def reasons_table() -> str:
    rows = ["| reason | when |", "| --- | --- |"]
    for cls in FAILURE_RESULTS:
        rows.append(f"| `{cls.reason}` | {_one_line(inspect.getdoc(cls) or '')} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {"settings": settings_table, "reasons": reasons_table}


def _filled(table: str) -> Callable[[re.Match[str]], str]:
    """What replaces a table's markers and old rows: the markers around `table`."""
    return lambda m: m.group(1) + table + "\n" + m.group(2)


def render(text: str) -> str:
    for name, make in TABLES.items():
        pattern = re.compile(
            rf"(<!-- generated: {name} -->\n).*?(<!-- end: {name} -->)", flags=re.DOTALL
        )
        if not pattern.search(text):
            raise SystemExit(f"{DOC.name}: no markers for the {name} table")
        text = pattern.sub(_filled(make()), text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the tables are stale")
    args = parser.parse_args()
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{DOC}: tables are stale; run `make docs`", file=sys.stderr)
            sys.exit(1)
        return
    DOC.write_text(wanted)


if __name__ == "__main__":
    main()
