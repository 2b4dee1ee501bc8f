"""The suite's warning filters (pyproject.toml): every warning is an error but the unclosed
socket of an interrupted PyMongo connect, which has no peer; a leaked connected socket, ours
or a library's, still fails the test it surfaces in."""

from __future__ import annotations

import warnings

import pytest

NEVER_CONNECTED = (
    "unclosed <socket.socket fd=34, family=2, type=1, proto=6, laddr=('127.0.0.1', 32900)>"
)
CONNECTED = (
    "unclosed <socket.socket fd=34, family=2, type=1, proto=6, laddr=('127.0.0.1', 32900), "
    "raddr=('127.0.0.1', 27017)>"
)


def test_the_socket_of_an_interrupted_connect_is_let_through() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn(NEVER_CONNECTED, ResourceWarning, stacklevel=1)
    assert seen == []  # ignored: neither raised nor recorded


def test_a_leaked_connected_socket_fails() -> None:
    with pytest.raises(ResourceWarning, match="raddr"):
        warnings.warn(CONNECTED, ResourceWarning, stacklevel=1)


def test_other_resource_warnings_fail() -> None:
    with pytest.raises(ResourceWarning):
        warnings.warn("unclosed file <_io.BufferedReader name='x'>", ResourceWarning, stacklevel=1)
