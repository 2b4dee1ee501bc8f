"""The overlay rules of tools/gen_openapi.py, on small documents (the real one is checked
against the plugin's output by tests/integration/test_rest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tools.gen_openapi import OverlayError, build, merge


def plugin_like() -> dict[str, Any]:
    return {
        "info": {"title": "checkout/v1/checkout.proto", "version": "version not set"},
        "paths": {
            "/api/x/{id}": {
                "get": {
                    "summary": "Gets x.\nbuf:lint:ignore RPC_RESPONSE_STANDARD_NAME",
                    "responses": {
                        "200": {"schema": {"$ref": "#/definitions/v1X"}},
                        "default": {"description": "An unexpected error response."},
                    },
                    "parameters": [
                        {"name": "id", "in": "path", "type": "string"},
                        {"name": "body", "in": "body", "schema": {"$ref": "#/definitions/Body"}},
                    ],
                }
            }
        },
        "definitions": {
            "v1X": {"properties": {"id": {"type": "string"}}},
            "Body": {"properties": {}},
        },
    }


def test_mappings_merge_and_null_deletes() -> None:
    assert merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": None, "e": 4}, "d": 5}) == {
        "a": {"b": 1, "e": 4},
        "d": 5,
    }


def test_a_reference_replaces_the_whole_schema() -> None:
    base = {"schema": {"type": "object", "properties": {"result": {"$ref": "#/definitions/A"}}}}
    assert merge(base, {"schema": {"$ref": "#/definitions/A"}}) == {
        "schema": {"$ref": "#/definitions/A"}
    }


def test_parameters_match_on_name_and_location() -> None:
    document = merge(
        plugin_like(),
        {
            "paths": {
                "/api/x/{id}": {
                    "get": {
                        "parameters": [
                            {"name": "id", "in": "path", "format": "uuid"},
                            {"name": "body", "in": "body", "$remove": True},
                            {"name": "id", "in": "formData", "type": "string"},
                        ]
                    }
                }
            }
        },
    )
    assert document["paths"]["/api/x/{id}"]["get"]["parameters"] == [
        {"name": "id", "in": "path", "type": "string", "format": "uuid"},
        {"name": "id", "in": "formData", "type": "string"},
    ]


@pytest.mark.parametrize(
    "overlay",
    [
        {"paths": {"/api/renamed": {"get": {}}}},
        {"definitions": {"v1X": {"properties": {"renamed_id": {"format": "uuid"}}}}},
        {
            "paths": {
                "/api/x/{id}": {
                    "get": {"parameters": [{"name": "nope", "in": "body", "$remove": True}]}
                }
            }
        },
    ],
)
def test_overlay_naming_what_is_not_there_fails(overlay: dict[str, Any]) -> None:
    with pytest.raises(OverlayError):
        merge(plugin_like(), overlay)


def test_build_sets_version_strips_lint_directives_and_prunes_definitions() -> None:
    overlay = {
        "paths": {
            "/api/x/{id}": {
                "get": {"parameters": [{"name": "body", "in": "body", "$remove": True}]}
            }
        }
    }
    document = build(plugin_like(), overlay, "1.2.3")
    assert document["info"]["version"] == "1.2.3"
    operation = document["paths"]["/api/x/{id}"]["get"]
    assert operation["summary"] == "Gets x."
    assert "rpcStatus" in operation["responses"]["default"]["description"]
    assert set(document["definitions"]) == {"v1X"}
