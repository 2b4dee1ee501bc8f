"""WakeSender sends to every address a target's name resolves to (compose replicas)."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import pytest

from checkout_server.adapters import udp_wake
from checkout_server.adapters.udp_wake import WakeSender

pytestmark = pytest.mark.timeout(10)


def test_a_name_of_several_replicas_wakes_each_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for receiver in receivers:
            receiver.bind(("127.0.0.1", 0))
            receiver.settimeout(5)
        ports = [r.getsockname()[1] for r in receivers]

        def resolve(host: str, port: int, **_: object) -> Sequence[tuple[object, ...]]:
            assert (host, port) == ("relay", 50052)
            return [
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", p)) for p in ports
            ] * 2  # the resolver may repeat an address: it is woken once

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        sender = WakeSender(["relay:50052"])
        try:
            sender()
        finally:
            sender.close()
        assert [r.recv(16) for r in receivers] == [udp_wake.WAKE, udp_wake.WAKE]
        assert sender.sent == 2
    finally:
        for receiver in receivers:
            receiver.close()
