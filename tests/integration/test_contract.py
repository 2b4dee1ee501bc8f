"""`buf breaking` against the released contract (tools/contract.py, run by `make lint`)
catches a breaking change and lets an addition through."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools import contract

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROTO = Path("protos/checkout/v1/checkout.proto")


def workspace(tmp_path: Path) -> Path:
    """A copy of the buf workspace (protos, buf.yaml, the googleapis module) to change."""
    copy = tmp_path / "ws"
    shutil.copytree(contract.ROOT / "protos", copy / "protos")
    shutil.copytree(contract.ROOT / "build" / "proto-deps", copy / "build" / "proto-deps")
    shutil.copy(contract.ROOT / "buf.yaml", copy / "buf.yaml")
    return copy


def edit(ws: Path, old: str, new: str) -> None:
    path = ws / PROTO
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_the_working_tree_keeps_the_released_contract() -> None:
    result = contract.breaking(contract.ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        (  # a removed field
            "message GetResultRequest {\n  // The event (a UUID).\n  string event_id = 1;",
            "message GetResultRequest {\n  reserved 1;",
            'Previously present field "1" with name "event_id" on message "GetResultRequest"',
        ),
        (  # a renumbered field
            "message GetStatusRequest {\n  // The event (a UUID).\n  string event_id = 1;",
            "message GetStatusRequest {\n  string event_id = 7;",
            'on message "GetStatusRequest"',
        ),
        (  # a removed RPC
            "  rpc GetResult(GetResultRequest) returns (GetResultResponse) {",
            "  rpc GetResultV2(GetResultRequest) returns (GetResultResponse) {",
            'Previously present RPC "GetResult"',
        ),
    ],
)
def test_a_breaking_change_fails_the_check(tmp_path: Path, old: str, new: str, says: str) -> None:
    ws = workspace(tmp_path)
    edit(ws, old, new)
    result = contract.breaking(ws)
    assert result.returncode != 0
    assert says in result.stdout


def test_an_added_field_passes_the_check(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    edit(
        ws,
        "message GetStatusRequest {\n  // The event (a UUID).\n  string event_id = 1;",
        "message GetStatusRequest {\n  // The event (a UUID).\n  string event_id = 1;\n"
        "  string view = 9;",
    )
    result = contract.breaking(ws)
    assert result.returncode == 0, result.stdout + result.stderr
