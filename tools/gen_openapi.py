"""Generate the OpenAPI (Swagger 2.0) document of the REST surface from the protos'
google.api.http bindings, with grpc-gateway's protoc-gen-openapiv2 (installed by devstack).

    python tools/gen_openapi.py [OUT]      # default: docs/openapi.yaml

The document is checked in (so REST users can read it without building anything) and
served by Envoy at GET /api/openapi.yaml; a test fails when it is out of date.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import tool_path
from tools.gen_protos import PROTOS, include_dirs, protoc

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def generate() -> str:
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    # The plugin wants a Go import path for each file; any path will do for OpenAPI output.
    go_paths = ",".join(f"M{s}=checkout.invalid/{Path(s).parent}" for s in sources)
    with tempfile.TemporaryDirectory() as tmp:
        protoc(
            f"-I{PROTOS}",
            *include_dirs(),
            f"--plugin=protoc-gen-openapiv2={tool_path('protoc-gen-openapiv2')}",
            f"--openapiv2_out={tmp}",
            "--openapiv2_opt=output_format=yaml,json_names_for_fields=false,"
            f"allow_merge=true,merge_file_name=checkout,{go_paths}",
            *sources,
        )
        return (Path(tmp) / "checkout.swagger.yaml").read_text()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(generate())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
