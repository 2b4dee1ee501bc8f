"""Build hook of checkout-client: generates the package `checkout_api` from the protos.

`checkout_api` holds the protobuf and gRPC modules (*_pb2.py, *_pb2_grpc.py) and their
mypy-protobuf type stubs (.pyi). The proto package `checkout.v1` is mounted at the virtual
path `checkout_api/` (`-Icheckout_api=<protos>`), so generated imports read
`from checkout_api.checkout.v1 import checkout_pb2` without rewriting, and no top-level
import name as generic as `checkout` is claimed.

- A wheel gets the package generated into a temporary folder, so building never writes into
  the source tree.
- An editable install gets it in client/checkout_api (git-ignored), next to checkout_client
  on the path the install adds; reinstalling regenerates it (`make` does when a proto changes).

The protos are the repository's protos/ (beside client/), or the copy an sdist carries.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grpc_tools
from google.api import annotations_pb2  # from googleapis-common-protos
from grpc_tools import protoc
from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = "checkout_api"


def find_protos(root: Path) -> Path:
    """The folder whose `checkout/v1/*.proto` are compiled: an sdist's own copy, else the
    repository's."""
    for candidate in (root / "protos", root.parent / "protos"):
        if any(candidate.rglob("*.proto")):
            return candidate
    raise RuntimeError(f"no .proto files in {root / 'protos'} or {root.parent / 'protos'}")


def plugin(name: str) -> str:
    """The protoc plugin script that mypy-protobuf installed, wherever the build environment
    put its scripts (pip's isolated builds use a prefix that is not next to sys.executable)."""
    for file in importlib.metadata.distribution("mypy-protobuf").files or []:
        if file.name in (name, f"{name}.exe"):
            return str(Path(str(file.locate())).resolve())
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} (from mypy-protobuf) not found")
    return found


def generate(protos: Path, out: Path) -> None:
    """Writes `out/checkout_api` from the .proto files under `protos`."""
    sources = sorted(p.relative_to(protos).as_posix() for p in protos.rglob("*.proto"))
    target = out / PACKAGE
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    googleapis = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PACKAGE}={protos}",
            f"-I{googleapis}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *(f"{PACKAGE}/{s}" for s in sources),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} (its errors are above)")
    for directory in [target, *[d for d in target.rglob("*") if d.is_dir()]]:
        (directory / "__init__.py").touch()
    (target / "py.typed").touch()


class ProtoBuildHook(BuildHookInterface[BuilderConfig]):
    PLUGIN_NAME = "custom"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tmp: Path | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        protos = find_protos(root)
        if version == "editable":
            generate(protos, root)
            return
        self._tmp = Path(tempfile.mkdtemp(prefix="checkout-api-"))
        generate(protos, self._tmp)
        build_data["force_include"][str(self._tmp / PACKAGE)] = PACKAGE

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def clean(self, versions: list[str]) -> None:
        shutil.rmtree(Path(self.root) / PACKAGE, ignore_errors=True)
