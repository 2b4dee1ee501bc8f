"""The released gRPC contract, and `buf breaking` against it.

    python tools/contract.py check     # make lint: fails on a breaking change (buf's FILE rules)
    python tools/contract.py release   # after a release: the current protos become the contract

The released contract is `contract/checkout.v1.json`, a buf image (JSON, so a release shows
up in review as a readable diff) of protos/checkout with its imports. `check` builds the same
image of the working tree and compares the two with `buf breaking`; additions (fields, RPCs,
messages) pass, removals, renumbering and type changes fail.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASED = ROOT / "contract" / "checkout.v1.json"
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
    result = breaking(ROOT)
    if result.returncode != 0:
        print(
            f"breaking changes against {RELEASED.relative_to(ROOT)}:\n{result.stdout}"
            f"{result.stderr}",
            file=sys.stderr,
        )
        return 1
    print(f"no breaking change against {RELEASED.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
