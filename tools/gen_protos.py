"""Generate Envoy's descriptor set (build/checkout.pb) and buf's googleapis protos
(build/proto-deps) from protos/.

The Python stubs (`checkout_api`) are not made here: the SDK's build hook
(client/hatch_build.py) generates them whenever checkout-client is built or installed.

Run by `make` (and the Dockerfile); safe to run again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools
from google.api import annotations_pb2  # from googleapis-common-protos

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
BUILD = ROOT / "build"


def include_dirs() -> list[str]:
    googleapis = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    wkt = Path(grpc_tools.__file__).resolve().parent / "_proto"
    return [f"-I{googleapis}", f"-I{wkt}"]


def protoc(*args: str) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", *args]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"protoc failed:\n{result.stderr}")


def main() -> None:
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    # Envoy's transcoder needs the descriptor set with every import (google/api, google/rpc
    # for error details) under the real proto file names.
    BUILD.mkdir(exist_ok=True)
    protoc(
        f"-I{PROTOS}",
        *include_dirs(),
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={BUILD / 'checkout.pb'}",
        *sources,
        "google/rpc/error_details.proto",
        "google/rpc/status.proto",
    )
    # buf cannot reach the Buf Schema Registry from here: it reads the googleapis protos
    # from this copy of the wheel's files (a module listed in buf.yaml, excluded from lint).
    deps = BUILD / "proto-deps"
    shutil.rmtree(deps, ignore_errors=True)
    googleapis = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    for sub in ("google/api", "google/rpc"):
        for proto in (googleapis / sub).glob("*.proto"):
            (deps / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy2(proto, deps / sub / proto.name)
    print(f"generated build/checkout.pb and build/proto-deps from {len(sources)} proto file(s)")


if __name__ == "__main__":
    main()
