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


async def test_a_name_unknown_at_start_is_woken_once_a_refresh_resolves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]
        started = False  # the compose service the name belongs to

        def resolve(host: str, port_: int, *_: object, **__: object) -> list[tuple[object, ...]]:
            assert (host, port_) == ("checkout", 50051)
            if not started:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port))]

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        sender = WakeSender(["checkout:50051"])
        try:
            sender()
            assert sender.sent == 0  # nowhere to send yet
            assert await sender.refresh() == udp_wake.REFRESH_S
            assert sender.sent == 0
            started = True
            await sender.refresh()
            sender()
            assert receiver.recv(16) == udp_wake.WAKE
            assert sender.sent == 1
            started = False  # a failed lookup later keeps the addresses known
            await sender.refresh()
            sender()
            assert sender.sent == 2
        finally:
            sender.close()
    finally:
        receiver.close()
