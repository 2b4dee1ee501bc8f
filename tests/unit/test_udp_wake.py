"""WakeSender sends to every address a target's name resolves to (compose replicas), signed;
WakeSigner and WakeListener take only wake-ups signed with the same secret, and recent."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence

import pytest

from checkout_server.adapters import udp_wake
from checkout_server.adapters.udp_wake import WakeListener, WakeSender, WakeSigner
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(10)

SECRET = "a-secret-of-sixteen-or-more"


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
        signer = WakeSigner(SECRET)
        sender = WakeSender(["relay:50052"], signer)
        try:
            sender()
        finally:
            sender.close()
        got = [r.recv(64) for r in receivers]
        assert [signer.check(datagram) for datagram in got] == [True, True]
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
        signer = WakeSigner(SECRET)
        sender = WakeSender(["checkout:50051"], signer)
        try:
            sender()
            assert sender.sent == 0  # nowhere to send yet
            assert await sender.refresh() == udp_wake.REFRESH_S
            assert sender.sent == 0
            started = True
            await sender.refresh()
            sender()
            assert signer.check(receiver.recv(64))
            assert sender.sent == 1
            started = False  # a failed lookup later keeps the addresses known
            await sender.refresh()
            sender()
            assert sender.sent == 2
        finally:
            sender.close()
    finally:
        receiver.close()


def test_only_a_recent_wake_up_signed_with_the_secret_is_taken() -> None:
    now = [1_000_000.0]
    signer = WakeSigner(SECRET, clock=lambda: now[0])
    good = signer.sign()
    assert len(good) == udp_wake.SIZE
    assert signer.check(good)
    forged = [
        b"wake",  # what unsigned wake-ups were
        b"",
        b"x" * udp_wake.SIZE,
        WakeSigner("another-secret-of-sixteen", clock=lambda: now[0]).sign(),
        good[:-1] + bytes([good[-1] ^ 1]),  # one bit of the signature flipped
        good[:5] + bytes([good[5] ^ 1]) + good[6:],  # one bit of the clock flipped
        good + b"!",
    ]
    for datagram in forged:
        assert not signer.check(datagram), datagram
    # A replay is taken only within MAX_AGE_S of when it was signed, either way.
    now[0] += udp_wake.MAX_AGE_S - 1
    assert signer.check(good)
    now[0] += 2
    assert not signer.check(good)
    now[0] = 1_000_000.0 - udp_wake.MAX_AGE_S - 1
    assert not signer.check(good)
    assert signer.refused_total == len(forged) + 2


async def test_the_listener_wakes_for_signed_datagrams_only() -> None:
    signer = WakeSigner(SECRET)
    woken: list[None] = []
    listener = await WakeListener.open("127.0.0.1:0", lambda: woken.append(None), signer)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for datagram in (b"wake", WakeSigner("another-secret-of-sixteen").sign(), signer.sign()):
            sender.sendto(datagram, ("127.0.0.1", listener.port))
        await wait_until(lambda: signer.refused_total == 2 and len(woken) == 1, timeout_s=5)
    finally:
        sender.close()
        listener.close()
    assert len(woken) == 1


async def test_a_flood_is_read_within_the_budget_and_the_rest_waits_in_the_kernel() -> None:
    signer = WakeSigner(SECRET)
    woken: list[None] = []
    listener = await WakeListener.open(
        "127.0.0.1:0", lambda: woken.append(None), signer, budget_per_s=5
    )
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    started = time.monotonic()
    try:
        for _ in range(10):
            sender.sendto(b"forged", ("127.0.0.1", listener.port))
        sender.sendto(signer.sign(), ("127.0.0.1", listener.port))
        await wait_until(lambda: listener.pauses_total == 1, timeout_s=5)
        assert signer.refused_total == 5  # the budget read; the kernel holds the rest
        await let_the_loop_run()
        assert signer.refused_total == 5
        assert not woken
        # Each second after a pause starts with a wake-up (a signed one may have been dropped
        # meanwhile); the second reads the other five, the third the signed one.
        await wait_until(lambda: len(woken) == 3, timeout_s=5)
    finally:
        sender.close()
        listener.close()
    assert signer.refused_total == 10
    assert listener.pauses_total == 2
    assert time.monotonic() - started >= 1.9  # the flood was spread over the seconds


async def let_the_loop_run() -> None:
    """Let the loop run its ready callbacks and poll its sockets a few times."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_listen_gives_none_without_wake_ups_or_when_the_address_is_taken() -> None:
    signer = WakeSigner(SECRET)
    assert await udp_wake.listen("off", lambda: None, signer) is None
    assert await udp_wake.listen("127.0.0.1:0", lambda: None, None) is None
    listener = await udp_wake.listen("127.0.0.1:0", lambda: None, signer)
    assert listener is not None
    try:  # the same port again: taken, so its owner polls instead
        assert await udp_wake.listen(f"127.0.0.1:{listener.port}", lambda: None, signer) is None
    finally:
        listener.close()


def test_a_sender_needs_targets_and_a_signer() -> None:
    signer = udp_wake.signer_of(SECRET)
    assert udp_wake.signer_of("") is None
    assert udp_wake.sender_to([], signer) is None
    assert udp_wake.sender_to(["relay:50052"], None) is None
    sender = udp_wake.sender_to(["relay:50052"], signer)
    assert sender is not None
    sender.close()
