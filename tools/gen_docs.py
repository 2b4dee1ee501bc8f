"""The reference tables of docs/, made from the code so they cannot drift:

- docs/configuration.md, `environment`: every variable the server and the relay read, one
  table per section of config.py (each field's variable, default and docstring);
- docs/relay.md, `relay-settings`: the sections the relay reads, linked to those tables;
- docs/api.md, `errors`: every ServiceError class of errors.py (its reason, gRPC code, HTTP
  status through Envoy, whether a retry can help, its Russian message and what its
  docstring's first paragraph says of when it is raised);
- docs/runner.md, `settings` and `reasons`: the runner's settings (config.RunnerSettings) and
  the reasons of its failure results (errors.FAILURE_RESULTS);
- docs/operations.md, `envoy-budgets`: Envoy's budgets (tools/render_envoy.py's Budgets, each
  field's default and docstring).

    python tools/gen_docs.py          # rewrite the tables (make docs)
    python tools/gen_docs.py --check  # exit 1 if any is stale (make lint, and the tests)

Each table sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->`; the text around
it is written by hand.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pydantic.fields import FieldInfo

from checkout_runner.config import SECRETS as RUNNER_SECRETS
from checkout_runner.config import RunnerSettings
from checkout_runner.errors import FAILURE_RESULTS
from checkout_server import errors
from checkout_server.config import (
    EnvRule,
    ProcessSettings,
    RelaySettings,
    Section,
    ServerSettings,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))  # run as a script: tools/ is on the path, the root is not

from tools.render_envoy import Budgets  # noqa: E402

KiB = 1024

# The processes whose settings docs/configuration.md lists, in its order, with their names.
PROCESSES: dict[type[ProcessSettings], str] = {
    ServerSettings: "`checkout-server`",
    RelaySettings: "`checkout-relay`",
}


# --- Cells ------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _first_paragraph(text: str) -> str:
    return inspect.cleandoc(text).split("\n\n", 1)[0]


def _own_doc(cls: type) -> str:
    """The class's own docstring (not one it inherits), cleaned."""
    return inspect.cleandoc(cls.__dict__.get("__doc__") or "")


def _default(name: str, value: object) -> str:
    if value == "" or value == frozenset():
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"  # as the variable is written
    if isinstance(value, frozenset):
        return f"`{','.join(sorted(value))}`"
    if name.endswith("_bytes") and isinstance(value, int):
        for unit, size in (("GiB", KiB**3), ("MiB", KiB**2), ("KiB", KiB)):
            if value >= size and value % size == 0:
                return f"{value // size} {unit}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _meaning(variable: str, field: FieldInfo) -> str:
    return _one_line(field.description or "").removeprefix(f"{variable}: ")


def _settings_rows(fields: Mapping[str, FieldInfo], hidden: tuple[str, ...] = ()) -> list[str]:
    """`| variable [default] | meaning |` rows; a default in `hidden` shows as (secret); a
    SECRET field names its `<NAME>_FILE` too."""
    rows = ["| variable [default] | meaning |", "| --- | --- |"]
    for name, field in fields.items():
        variable = name.upper()
        default = "(secret)" if name in hidden else _default(name, field.default)
        cell = f"`{variable}` [{default}]"
        if EnvRule.SECRET in field.metadata:
            cell += f" or `{variable}_FILE`"
        rows.append(f"| {cell} | {_meaning(variable, field)} |")
    return rows


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading (tests/markdown.py checks that every link finds one)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# --- docs/configuration.md and docs/relay.md ----------------------------------------------------


def sections() -> Iterator[tuple[type[Section], list[type[ProcessSettings]]]]:
    """Every section of PROCESSES' settings, in the order the first process lists it, with the
    processes that read it. Fails if a process has a field outside its sections."""
    seen: dict[type[Section], list[type[ProcessSettings]]] = {}
    for process in PROCESSES:
        own = [base for base in process.__bases__ if issubclass(base, Section)]
        fields = {name for section in own for name in section.model_fields}
        if fields != set(process.model_fields):
            stray = sorted(set(process.model_fields) - fields)
            raise SystemExit(f"{process.__name__}: fields outside a section: {stray}")
        for section in own:
            seen.setdefault(section, []).append(process)
    yield from seen.items()


def _title(section: type[Section]) -> tuple[str, str]:
    """A section's heading (its docstring's first line) and the rest of its docstring."""
    doc = _own_doc(section)
    if not doc:
        raise SystemExit(f"config.{section.__name__} has no docstring: say what it holds")
    title, _, rest = doc.partition("\n")
    return title.rstrip("."), _one_line(rest)


def _readers(processes: list[type[ProcessSettings]]) -> str:
    return " and ".join(PROCESSES[p] for p in processes)


def environment_tables() -> str:
    parts = []
    for section, processes in sections():
        title, about = _title(section)
        intro = f"`{section.__name__}`, read by {_readers(processes)}. {about}".rstrip()
        parts += [f"### {title}", "", intro, "", *_settings_rows(section.model_fields), ""]
    return "\n".join(parts).rstrip("\n")


def relay_sections() -> str:
    """The relay's sections in its own order, each a link to its table with its variables."""
    readers = dict(sections())
    rows = []
    for section in RelaySettings.__bases__:
        if issubclass(section, Section):
            title, _ = _title(section)
            names = ", ".join(f"`{name.upper()}`" for name in section.model_fields)
            shared = "" if readers[section] == [RelaySettings] else " (shared with the server)"
            rows.append(f"- [{title}](configuration.md#{_slug(title)}){shared}: {names}")
    return "\n".join(rows)


# --- docs/api.md ------------------------------------------------------------------------------


def error_classes() -> list[type[errors.ServiceError]]:
    """ServiceError and every subclass of it in errors.py, in the module's order."""
    return [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.ServiceError)
    ]


def error_row(cls: type[errors.ServiceError]) -> str:
    code = f"{cls.code.name} ({cls.code.value[0]})"
    retry = "yes" if cls.retriable else "no"
    when = _one_line(_first_paragraph(_own_doc(cls)))
    if not when:
        raise SystemExit(f"errors.{cls.__name__} has no docstring: say when it is raised")
    return (
        f"| `{cls.reason}` | {code} | {errors.HTTP_STATUS[cls.code]} | {retry} "
        f"| `{cls.message}` | {when} |"
    )


def errors_table() -> str:
    rows = ["| reason | gRPC code | HTTP | retry | message | when |", "| --- " * 6 + "|"]
    rows += [error_row(cls) for cls in error_classes()]
    return "\n".join(rows)


# --- docs/runner.md ---------------------------------------------------------------------------


def runner_settings_table() -> str:
    return "\n".join(_settings_rows(RunnerSettings.model_fields, hidden=RUNNER_SECRETS))


def runner_reasons_table() -> str:
    rows = ["| reason | when | `description` (for people) |", "| --- | --- | --- |"]
    for cls in FAILURE_RESULTS:
        when = _one_line(inspect.getdoc(cls) or "")
        rows.append(f"| `{cls.reason}` | {when} | {cls.description} |")
    return "\n".join(rows)


# --- docs/operations.md ----------------------------------------------------------------------


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each annotated field of a class (read from its source)."""
    body = ast.parse(inspect.getsource(cls)).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for field, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[field.target.id] = inspect.cleandoc(after.value.value)
    return docs


def envoy_budgets_table() -> str:
    docs = _field_docs(Budgets)
    rows = ["| budget | default | what it bounds |", "| --- | --- | --- |"]
    defaults = Budgets()
    for field in dataclasses.fields(Budgets):
        value: int = getattr(defaults, field.name)
        shown = f"{value >> 30} GiB" if field.name.endswith("_bytes") else f"{value:,}"
        rows.append(f"| `{field.name}` | {shown} | {_one_line(docs[field.name])} |")
    return "\n".join(rows)


# --- Pages ------------------------------------------------------------------------------------

PAGES: dict[Path, dict[str, Callable[[], str]]] = {
    DOCS / "configuration.md": {"environment": environment_tables},
    DOCS / "relay.md": {"relay-settings": relay_sections},
    DOCS / "api.md": {"errors": errors_table},
    DOCS / "runner.md": {"settings": runner_settings_table, "reasons": runner_reasons_table},
    DOCS / "operations.md": {"envoy-budgets": envoy_budgets_table},
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end: {name} -->)", re.DOTALL)


def _filled(table: str) -> Callable[[re.Match[str]], str]:
    """What replaces a table's markers and old rows: the markers around `table`."""
    return lambda m: m.group(1) + table + "\n" + m.group(2)


def render(page: Path, text: str) -> str:
    """`text` (the page's) with each of its tables made anew."""
    for name, make in PAGES[page].items():
        pattern = _block(name)
        if not pattern.search(text):
            raise SystemExit(f"{page.name}: no markers for the {name} table")
        text = pattern.sub(_filled(make()), text)
    return text


def stale() -> dict[Path, str]:
    """Each page whose tables are not the code's, with a diff of what `make docs` changes."""
    found = {}
    for page in PAGES:
        current = page.read_text()
        wanted = render(page, current)
        if wanted != current:
            name = str(page.relative_to(ROOT))
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                wanted.splitlines(keepends=True),
                f"{name} (as it is)",
                f"{name} (from the code)",
                n=0,
            )
            found[page] = "".join(diff)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a table is stale")
    args = parser.parse_args()
    if args.check:
        problems = stale()
        for page, diff in problems.items():
            print(f"{page.relative_to(ROOT)}: stale; run `make docs`\n{diff}", file=sys.stderr)
        sys.exit(1 if problems else 0)
    for page in PAGES:
        page.write_text(render(page, page.read_text()))


if __name__ == "__main__":
    main()
