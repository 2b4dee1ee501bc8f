"""Wake-ups as UDP datagrams: the server tells the relays that an outbox message was written.

A wake-up is a hint, never a command: it carries nothing, and the relay that receives it
looks for due events of the shards it holds, as its safety-net poll would. So losing one
costs latency (until that poll), never an event, and a duplicate costs one cheap query.

Still, a datagram costs its receiver a query, so only signed ones count: each carries the
time it was sent and an HMAC-SHA256 of it under WAKE_SECRET, the secret every process of a
deployment shares. A datagram whose signature does not check, or that is older (or newer)
than `MAX_AGE_S`, is dropped and counted; a replayed one can only repeat a hint within that
window, and the receivers look at most once per their minimum gap however many arrive.

Why not a tailable cursor on a capped collection (the same on MongoDB and FerretDB)? FerretDB
1.24 serves one, but by polling: each await-data getMore re-reads the whole capped collection
every 10 ms (`awaitData` in internal/handler/msg_getmore.go), which cost 3.8 % of a core
idle for one tailer over two documents, and 14 % over a hundred (docs/relay.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

log = logging.getLogger(__name__)

# A wake-up: this tag, the sender's clock (milliseconds since the epoch, 8 bytes big-endian)
# and the first 16 bytes of the HMAC-SHA256 of both under the shared secret.
TAG = b"ckw1"
_CLOCK = struct.Struct(">Q")
_MAC_BYTES = 16
SIZE = len(TAG) + _CLOCK.size + _MAC_BYTES
# How far a wake-up's clock may be from the receiver's (clock skew and delivery).
MAX_AGE_S = 30.0
# Datagrams a listener reads in a second at most. Past it the listener stops reading until
# the second is over and the kernel drops what comes meanwhile, so a flood of forged ones
# costs a bounded share of a core (each read and checked costs microseconds of the event
# loop). A signed wake-up may be among those dropped, so the listener wakes its owner once
# when it reads again: a flood delays wake-ups by a second at most, at one look a second. A
# sender sends at most one per RELAY_WAKE_MIN_GAP_S (20 a second): room for 50 senders.
READ_BUDGET_PER_S = 1000


class WakeSigner:
    """Signs wake-ups and checks them, under one secret; counts what it refused."""

    def __init__(self, secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode()
        self._clock = clock
        self.refused_total = 0  # datagrams dropped: a bad size, tag, signature or clock

    def _mac(self, signed: bytes) -> bytes:
        return hmac.new(self._key, signed, hashlib.sha256).digest()[:_MAC_BYTES]

    def sign(self) -> bytes:
        signed = TAG + _CLOCK.pack(int(self._clock() * 1000))
        return signed + self._mac(signed)

    def check(self, datagram: bytes) -> bool:
        """Whether `datagram` is a wake-up signed with this secret within MAX_AGE_S of now;
        one that is not is counted in `refused_total`."""
        if len(datagram) == SIZE and datagram.startswith(TAG):
            signed, mac = datagram[:-_MAC_BYTES], datagram[-_MAC_BYTES:]
            if hmac.compare_digest(mac, self._mac(signed)):
                (millis,) = _CLOCK.unpack(signed[len(TAG) :])
                if abs(self._clock() - millis / 1000) <= MAX_AGE_S:
                    return True
        self.refused_total += 1
        return False


def _address(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


# How often the targets' names are resolved again (WakeSender.refresh).
REFRESH_S = 30.0

Address = tuple[int, tuple[str, int]]  # socket family, (host, port)


def _addresses(infos: list[tuple[Any, ...]]) -> list[Address]:
    # Every address of the name, once: a compose service of several replicas has one each.
    return list(dict.fromkeys((int(i[0]), (str(i[4][0]), int(i[4][1]))) for i in infos))


class WakeSender:
    """Sends a wake-up to every target, without waiting and without failing: a datagram that
    cannot be sent is dropped (the receivers' safety-net poll covers it).

    Each target's name is resolved to all its addresses when made, and again by `refresh`
    (run it as a Supervisor round): replicas come and go, and a name may not resolve yet at
    start (a compose service that starts after this one)."""

    def __init__(self, targets: Iterable[str], signer: WakeSigner) -> None:
        self._signer = signer
        self._targets = sorted(targets)
        self._resolved: dict[str, list[Address]] = {}
        self._sockets: dict[int, socket.socket] = {}
        self.sent = 0
        for target in self._targets:
            host, port = _address(target)
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning(
                    "wake-up target not resolved yet; none sent to it until it is "
                    "(tried again every %.0f s): %s: %s",
                    REFRESH_S,
                    target,
                    exc,
                )
                continue
            self._update(target, infos)

    def _update(self, target: str, infos: list[tuple[Any, ...]]) -> None:
        addresses = _addresses(infos)
        for family, _ in addresses:
            if family not in self._sockets:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sockets[family] = sock
        self._resolved[target] = addresses

    async def refresh(self) -> float:
        """Resolve every target again, off the event loop; one that fails keeps the addresses
        it had. Returns the seconds until the next refresh (a Supervisor round)."""
        loop = asyncio.get_running_loop()
        for target in self._targets:
            host, port = _address(target)
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.debug("wake-up target not resolved: %s: %s", target, exc)
                continue
            if _addresses(infos) != self._resolved.get(target):
                log.info("wake-up target resolved", extra={"target": target})
            self._update(target, infos)
        return REFRESH_S

    def __call__(self) -> None:
        datagram = self._signer.sign()
        for family, address in dict.fromkeys(a for v in self._resolved.values() for a in v):
            try:
                self._sockets[family].sendto(datagram, address)
                self.sent += 1
            except OSError as exc:  # a full buffer, no route: the safety net covers it
                log.debug("wake-up not sent to %s: %s", address, exc)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._resolved.clear()


class _Pausable(Protocol):
    def is_reading(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool: ...


class _WakeProtocol(asyncio.DatagramProtocol):
    """Checks each datagram, reading `budget_per_s` a second at most (READ_BUDGET_PER_S)."""

    def __init__(
        self,
        on_wake: Callable[[], None],
        signer: WakeSigner,
        *,
        budget_per_s: int = READ_BUDGET_PER_S,
    ) -> None:
        self._on_wake = on_wake
        self._signer = signer
        self._budget = budget_per_s
        self._transport: _Pausable | None = None
        self._window_start = time.monotonic()
        self._read = 0
        self.pauses_total = 0  # seconds cut short by the budget

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's datagram transports pause as its stream transports do; typeshed omits it.
        self._transport = cast(_Pausable, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._read = now, 0
        self._read += 1
        transport = self._transport
        if self._read >= self._budget and transport is not None and transport.is_reading():
            transport.pause_reading()
            self.pauses_total += 1
            rest_s = max(0.0, 1.0 - (now - self._window_start))
            asyncio.get_running_loop().call_later(rest_s, self._resume)
        if self._signer.check(data):
            self._on_wake()
        else:
            log.debug("wake-up refused from %s", addr)

    def _resume(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
            self._on_wake()  # for a signed wake-up the kernel may have dropped meanwhile


class WakeListener:
    """Calls `on_wake` for every wake-up `signer` accepts on `address` (`host:port`, UDP),
    reading READ_BUDGET_PER_S datagrams a second at most."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _WakeProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.port = int(transport.get_extra_info("sockname")[1])

    @property
    def pauses_total(self) -> int:
        """Seconds in which the listener stopped reading, its budget spent (a flood)."""
        return self._protocol.pauses_total

    @classmethod
    async def open(
        cls,
        address: str,
        on_wake: Callable[[], None],
        signer: WakeSigner,
        *,
        budget_per_s: int = READ_BUDGET_PER_S,
    ) -> WakeListener:
        """Listen on `address`; raises OSError when it cannot be bound."""
        host, port = _address(address)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _WakeProtocol(on_wake, signer, budget_per_s=budget_per_s),
            local_addr=(host, port),
        )
        return cls(transport, protocol)

    def close(self) -> None:
        self._transport.close()


def signer_of(secret: str) -> WakeSigner | None:
    """The signer of WAKE_SECRET; None without one (no wake-up is then sent or heard)."""
    return WakeSigner(secret) if secret else None


def sender_to(targets: Iterable[str], signer: WakeSigner | None) -> WakeSender | None:
    """A sender to `targets` (WATCH_WAKE_TARGETS, RELAY_WAKE_TARGETS); None without targets
    or signer (the settings refuse targets without WAKE_SECRET). The caller closes it."""
    targets = frozenset(targets)
    return WakeSender(targets, signer) if targets and signer is not None else None


async def listen(
    address: str, on_wake: Callable[[], None], signer: WakeSigner | None
) -> WakeListener | None:
    """A listener on `address` calling `on_wake`, or None: without wake-ups (`off`, no
    signer) or when the address cannot be bound (logged), its owner polls instead."""
    if address == "off" or signer is None:
        return None
    try:
        listener = await WakeListener.open(address, on_wake, signer)
    except OSError as exc:
        log.warning("cannot listen for wake-ups on %s; polling: %s", address, exc)
        return None
    log.info("listening for wake-ups", extra={"wake_addr": address})
    return listener
