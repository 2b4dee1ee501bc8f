"""devstack.free_port: the ports tests give their servers."""

from __future__ import annotations

import socket

from devstack import free_port
from devstack._process import _ephemeral_low


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    # A port from the ephemeral range may be taken by any outgoing connection before the
    # server it was given binds it: the "Address already in use" of a busy run.
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= port < _ephemeral_low() for port in ports)
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
