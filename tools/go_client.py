"""The Go client (clients/go): its generated code, made by buf from buf.gen.yaml with the
local plugins devstack installs, and the checks `make lint` runs on the module.

    python tools/go_client.py generate   # `make go-client`: rewrite clients/go/gen
    python tools/go_client.py check      # `make lint`: gen is what buf makes now, gofmt, go vet

The generated code is committed (a Go module must carry it), so `check` generates into a
temporary folder and compares, as the OpenAPI document and the docs' tables are checked.
Needs `make proto` (build/proto-deps) and `make stack` (buf and the plugins) first.
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import tool_path
from devstack._install import go_env

ROOT = Path(__file__).resolve().parent.parent
MODULE = Path("clients/go")
GEN = MODULE / "gen"  # buf.gen.yaml's `out`
REGENERATE = "make go-client"


def buf_generate(base: Path | None = None) -> None:
    """`buf generate` with the root buf.gen.yaml, into the work tree or under `base`."""
    out = ["-o", str(base)] if base is not None else []
    done = subprocess.run(
        [str(tool_path("buf")), "generate", *out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"buf generate failed:\n{done.stderr}")


def differences(expected: Path, actual: Path) -> list[str]:
    """The files that differ between two trees, missing from `actual` or extra in it."""
    found: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: Path) -> None:
        found.extend(f"{prefix / n}: missing" for n in cmp.left_only)
        found.extend(f"{prefix / n}: not generated any more" for n in cmp.right_only)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        found.extend(f"{prefix / n}: differs" for n in [*mismatch, *errors])
        for name, sub in cmp.subdirs.items():
            walk(sub, prefix / name)

    walk(filecmp.dircmp(expected, actual), Path())
    return found


def check_generated() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="go-client-") as tmp:
        buf_generate(Path(tmp))
        stale = differences(Path(tmp) / GEN, ROOT / GEN)
    return [f"{GEN / line}" for line in stale]


def go(*args: str, timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
    """`go ARGS` in the module, as devstack builds Go (go.sum must pin every module), within
    `timeout_s` when given."""
    env = go_env()
    env["GOFLAGS"] = f"{env.get('GOFLAGS', '')} -mod=readonly".strip()
    return subprocess.run(
        ["go", *args],
        cwd=ROOT / MODULE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def check() -> int:
    failures: list[str] = []
    if stale := check_generated():
        failures.append(
            f"{GEN} is not what buf generates from protos/ now; run `{REGENERATE}`:\n  "
            + "\n  ".join(stale)
        )
    gofmt = subprocess.run(
        ["gofmt", "-l", str(MODULE)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if gofmt.returncode != 0 or gofmt.stdout.strip():
        failures.append(f"gofmt -l: not formatted (gofmt -w them):\n{gofmt.stdout}{gofmt.stderr}")
    vet = go("vet", "./...")
    if vet.returncode != 0:
        failures.append(f"go vet ./... in {MODULE}:\n{vet.stdout}{vet.stderr}")
    for failure in failures:
        print(failure, file=sys.stderr)
    if not failures:
        print(f"{MODULE}: generated code current, gofmt and go vet clean")
    return 1 if failures else 0


def main() -> int:
    command = sys.argv[1] if len(sys.argv) == 2 else ""
    if command == "generate":
        buf_generate()
        print(f"generated {GEN} with buf.gen.yaml")
        return 0
    if command == "check":
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
