"""Generate the OpenAPI (Swagger 2.0) document of the REST surface from the protos'
google.api.http bindings, with grpc-gateway's protoc-gen-openapiv2 (installed by devstack),
made precise by tools/openapi_overlay.yaml.

    python tools/gen_openapi.py [OUT]      # default: docs/openapi.yaml

The plugin gives paths, parameters, schemas and descriptions (the proto comments); the
overlay adds what the API enforces and the protos cannot say without grpc-gateway's options
(formats, enums, bounds, the error details, the upload bodies); the version is the project's
(pyproject.toml). The document is checked in (so REST users can read it without building
anything) and served by Envoy at GET /api/openapi.yaml; a test fails when it is out of date.
"""

from __future__ import annotations

import re
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack import tool_path
from tools.gen_protos import PROTOS, include_dirs, protoc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "openapi.yaml"
OVERLAY = Path(__file__).resolve().parent / "openapi_overlay.yaml"
# buf's lint exemptions are proto comments, not documentation.
_LINT_DIRECTIVE = re.compile(r"^\s*buf:lint:ignore .*$\n?", re.MULTILINE)


ERROR_RESPONSE = (
    "An error: a google.rpc.Status (rpcStatus) with a Russian message and an ErrorInfo "
    "reason; the HTTP status follows the gRPC code."
)


class OverlayError(ValueError):
    """The overlay names something the plugin's output does not have."""


# A client-streaming RPC bound to a path with variables (PATCH /api/uploads/{upload_id}):
# Envoy transcodes it, but the plugin refuses it ("cannot use path parameter in client
# streaming"). It is given a copy of the protos where such variables are literal
# placeholders, and `_restore_stream_path_variables` turns them back into path parameters.
_STREAM_BINDING = re.compile(
    r"(rpc \w+\(stream [^)]*\)[^{]*\{\s*option \(google\.api\.http\) = \{\s*\w+: \")([^\"]*)"
)
_PATH_VARIABLE = re.compile(r"\{(\w+)\}")
_PLACEHOLDER = re.compile(r"__var_(\w+)__")


def _hide_stream_path_variables(text: str) -> str:
    return _STREAM_BINDING.sub(
        lambda m: m.group(1) + _PATH_VARIABLE.sub(r"__var_\1__", m.group(2)), text
    )


def _restore_stream_path_variables(document: dict[str, Any]) -> None:
    for path in [p for p in document["paths"] if _PLACEHOLDER.search(p)]:
        names = _PLACEHOLDER.findall(path)
        operations = document["paths"].pop(path)
        for operation in operations.values():
            kept = [p for p in operation.get("parameters", []) if p["name"] not in names]
            variables = [
                {"name": n, "in": "path", "required": True, "type": "string"} for n in names
            ]
            operation["parameters"] = variables + kept
        document["paths"].setdefault(_PLACEHOLDER.sub(r"{\1}", path), {}).update(operations)


def plugin_document() -> dict[str, Any]:
    """protoc-gen-openapiv2's document for every proto under protos/."""
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    # The plugin wants a Go import path for each file; any path will do for OpenAPI output.
    go_paths = ",".join(f"M{s}=checkout.invalid/{Path(s).parent}" for s in sources)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as copy:
        for source in sources:
            target = Path(copy) / source
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_hide_stream_path_variables((PROTOS / source).read_text()))
        protoc(
            f"-I{copy}",
            *include_dirs(),
            f"--plugin=protoc-gen-openapiv2={tool_path('protoc-gen-openapiv2')}",
            f"--openapiv2_out={tmp}",
            "--openapiv2_opt=output_format=yaml,json_names_for_fields=false,"
            f"allow_merge=true,merge_file_name=checkout,{go_paths}",
            *sources,
        )
        document: dict[str, Any] = yaml.safe_load((Path(tmp) / "checkout.swagger.yaml").read_text())
    _restore_stream_path_variables(document)
    return document


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def merge(base: Any, overlay: Any, where: str = "") -> Any:
    """`overlay` merged into `base` by the rules in tools/openapi_overlay.yaml."""
    if isinstance(overlay, dict) and "$ref" in overlay:
        return overlay  # a reference is a whole schema
    if isinstance(overlay, dict) and isinstance(base, dict):
        merged = dict(base)
        for key, value in overlay.items():
            at = f"{where}/{key}"
            if value is None:
                merged.pop(key, None)
            elif key == "parameters" and isinstance(value, list):
                merged[key] = _merge_parameters(base.get(key, []), value, at)
            elif key in base:
                merged[key] = merge(base[key], value, at)
            elif where == "/paths" or where.endswith("/properties"):
                raise OverlayError(f"{at}: not in the plugin's output")
            else:
                merged[key] = value
        return merged
    return overlay


def _merge_parameters(base: list[Any], overlay: list[Any], where: str) -> list[Any]:
    merged = list(base)
    for item in overlay:
        key = (item["name"], item["in"])
        index = next((i for i, p in enumerate(merged) if (p["name"], p["in"]) == key), None)
        if item.get("$remove"):
            if index is None:
                raise OverlayError(f"{where}: no parameter {key} to remove")
            del merged[index]
        elif index is None:
            merged.append(item)
        else:
            merged[index] = merge(merged[index], item, f"{where}/{key[0]}")
    return merged


def _strip_lint_directives(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_lint_directives(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_lint_directives(v) for v in node]
    if isinstance(node, str):
        return _LINT_DIRECTIVE.sub("", node).rstrip("\n") if "buf:lint:" in node else node
    return node


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _prune_definitions(document: dict[str, Any]) -> None:
    """Drop the definitions nothing refers to any more (e.g. HttpBody once the upload body
    is described as a form)."""
    definitions: dict[str, Any] = document.get("definitions", {})
    while unused := [n for n in definitions if f"#/definitions/{n}" not in _refs(document)]:
        for name in unused:
            del definitions[name]


def build(plugin: dict[str, Any], overlay: dict[str, Any], version: str) -> dict[str, Any]:
    """The published document: the plugin's, with the overlay merged in."""
    document: dict[str, Any] = merge(_strip_lint_directives(plugin), overlay)
    document["info"]["version"] = version
    for path in document["paths"].values():
        for operation in path.values():
            operation["responses"]["default"]["description"] = ERROR_RESPONSE
    _prune_definitions(document)
    return document


class _Dumper(yaml.SafeDumper):
    """Indented lists and block scalars for multi-line text, as the plugin writes them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def generate() -> str:
    overlay = yaml.safe_load(OVERLAY.read_text())
    document = build(plugin_document(), overlay, project_version())
    return yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1_000_000, indent=2
    )


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(generate())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
