"""Generate the Python stubs, type stubs and the Envoy descriptor set from protos/.

The generated package is `checkout_api` (under client/, git-ignored): the proto package
`checkout.v1` is mounted at the virtual path `checkout_api/` so generated imports read
`from checkout_api.checkout.v1 import ...` without rewriting, and no top-level import
name as generic as `checkout` is claimed.

Run by `make` (and the Dockerfile) before the package is installed; safe to run again.
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
OUT = ROOT / "client"
PACKAGE = "checkout_api"
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
    target = OUT / PACKAGE
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    mypy_plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    mypy_grpc_plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    protoc(
        f"-I{PACKAGE}={PROTOS}",
        *include_dirs(),
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={mypy_plugin}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *(f"{PACKAGE}/{s}" for s in sources),
    )
    for directory in [target, *[d for d in target.rglob("*") if d.is_dir()]]:
        (directory / "__init__.py").touch()
    (target / "py.typed").touch()

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
    print(f"generated {PACKAGE} and build/checkout.pb from {len(sources)} proto file(s)")


if __name__ == "__main__":
    main()
