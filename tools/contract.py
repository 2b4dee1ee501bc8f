"""The contracts between the processes: the released gRPC contract with `buf breaking` against
it, and the JSON Schemas of the Kafka record and the result document.

    python tools/contract.py check     # make lint: fails on a breaking change (buf's FILE rules)
                                       # or on a schema or an example that is not valid
    python tools/contract.py release   # after a release: the current protos become the contract

The released contract is `contract/checkout.v1.json`, a buf image (JSON, so a release shows
up in review as a readable diff) of protos/checkout with its imports. `check` builds the same
image of the working tree and compares the two with `buf breaking`; additions (fields, RPCs,
messages) pass, removals, renumbering and type changes fail.

The JSON documents that cross processes without protobuf have a versioned JSON Schema each,
`contract/NAME.vN.schema.json`: the relay's Kafka record (`video-uploaded.v1`), read by the
detection runner, and the runner's result (`result.v1`), read by the server. `check` validates
each schema against its meta-schema and each example `contract/examples/NAME.vN*.json`
against its schema (formats such as date-time asserted); tests/unit/test_process_contracts.py
validates what the producers write and feeds the examples to the consumers. A change that is
not additive is a new version (a new file), never an edit of a released one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASED = ROOT / "contract" / "checkout.v1.json"
SCHEMAS = ROOT / "contract"
EXAMPLES = SCHEMAS / "examples"
BUF = ROOT / ".stack" / "bin" / "buf"


def build_image(workspace: Path, out: Path) -> None:
    """The buf image of `workspace`'s checkout protos (with imports, without source info)."""
    _buf(workspace, "build", "--path", "protos/checkout", "--exclude-source-info", "-o", str(out))


def breaking(workspace: Path, against: Path = RELEASED) -> subprocess.CompletedProcess[str]:
    """`buf breaking` of `workspace`'s protos against the released image (not raising)."""
    with tempfile.TemporaryDirectory(prefix="contract-") as tmp:
        current = Path(tmp) / "current.binpb"
        build_image(workspace, current)
        config = str(workspace / "buf.yaml")
        return subprocess.run(
            [str(BUF), "breaking", str(current), "--against", str(against), "--config", config],
            cwd=workspace,
            capture_output=True,
            text=True,
            check=False,
        )


def schema_problems(folder: Path = SCHEMAS) -> list[str]:
    """What is wrong with the JSON Schemas in `folder` and their examples (empty: nothing);
    a schema without an example is a problem too."""
    import jsonschema_rs  # a dev dependency: only lint and tests check schemas

    problems = []
    for path in sorted(folder.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        try:
            jsonschema_rs.meta.validate(schema)
        except jsonschema_rs.ValidationError as exc:
            problems.append(f"{path.name}: not a valid JSON Schema: {exc}")
            continue
        validator = jsonschema_rs.validator_for(schema, validate_formats=True)
        name = path.name.removesuffix(".schema.json")
        examples = sorted((folder / "examples").glob(f"{name}*.json"))
        if not examples:
            problems.append(f"{path.name}: no example in {EXAMPLES.name}/")
        for example in examples:
            for error in validator.iter_errors(json.loads(example.read_text())):
                problems.append(f"{example.name}: {error}")
    return problems


def _buf(cwd: Path, *args: str) -> None:
    result = subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"buf {args[0]} failed:\n{result.stdout}{result.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "release"])
    args = parser.parse_args()
    if args.command == "release":
        RELEASED.parent.mkdir(exist_ok=True)
        build_image(ROOT, RELEASED)
        print(f"released contract written: {RELEASED.relative_to(ROOT)}")
        return 0
    problems = schema_problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    result = breaking(ROOT)
    if result.returncode != 0:
        print(
            f"breaking changes against {RELEASED.relative_to(ROOT)}:\n{result.stdout}"
            f"{result.stderr}",
            file=sys.stderr,
        )
        return 1
    print(f"schemas and examples valid; no breaking change against {RELEASED.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
