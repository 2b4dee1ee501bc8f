"""Wake-ups as UDP datagrams: the server tells the relays that an outbox message was written.

A wake-up is a hint, never a command: it carries nothing, and the relay that receives it
looks for due events of the shards it holds, as its safety-net poll would. So losing one
costs latency (until that poll), never an event, and a duplicate costs one cheap query.

Why not a tailable cursor on a capped collection (the same on MongoDB and FerretDB)? FerretDB
1.24 serves one, but by polling: each await-data getMore re-reads the whole capped collection
every 10 ms (`awaitData` in internal/handler/msg_getmore.go), which cost 3.8 % of a core
idle for one tailer over two documents, and 14 % over a hundred (docs/relay.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

WAKE = b"wake"


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

    def __init__(self, targets: Iterable[str]) -> None:
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
        for family, address in dict.fromkeys(a for v in self._resolved.values() for a in v):
            try:
                self._sockets[family].sendto(WAKE, address)
                self.sent += 1
            except OSError as exc:  # a full buffer, no route: the safety net covers it
                log.debug("wake-up not sent to %s: %s", address, exc)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._resolved.clear()


class _WakeProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_wake: Callable[[], None]) -> None:
        self._on_wake = on_wake

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._on_wake()


class WakeListener:
    """Calls `on_wake` for every datagram received on `address` (`host:port`, UDP)."""

    def __init__(self, transport: asyncio.DatagramTransport, port: int) -> None:
        self._transport = transport
        self.port = port

    @classmethod
    async def open(cls, address: str, on_wake: Callable[[], None]) -> WakeListener:
        """Listen on `address`; raises OSError when it cannot be bound."""
        host, port = _address(address)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _WakeProtocol(on_wake), local_addr=(host, port)
        )
        bound = transport.get_extra_info("sockname")
        return cls(transport, int(bound[1]))

    def close(self) -> None:
        self._transport.close()
