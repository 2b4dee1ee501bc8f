"""Who a call's client is, for the per-client limits: its API key's owner, or with
authentication off its address. A call that comes through a trusted proxy (TRUSTED_PROXIES:
Envoy) is the address that proxy appended to `x-forwarded-for`, so that REST clients behind
one Envoy are told apart; from anyone else that header is ignored (a client could write
anything there).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

import grpc


def peer_ip(peer: str) -> str:
    """The IP address of a gRPC peer string (`ipv4:10.0.0.7:51234`, `ipv6:[::1]:51234`), or
    "" when it is none (a Unix socket, say)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    return _address(rest.rpartition(":")[0].removeprefix("[").removesuffix("]"))


@functools.lru_cache(maxsize=4096)
def _address(host: str) -> str:
    """`host` written as `ipaddress` writes it, or "" when it is no IP address (remembered,
    4,096 at most: a client's calls come from a few addresses, and each call asks)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


def forwarded_for(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The last address of the last `x-forwarded-for` value (what the nearest proxy saw), or
    "" when there is none or it is no IP address."""
    values = [value for key, value in metadata if key == "x-forwarded-for"]
    if not values or not isinstance(values[-1], str):
        return ""
    return _address(values[-1].rsplit(",", 1)[-1].strip())


class Clients:
    """Names the client of a call (`of`), trusting `x-forwarded-for` from `trusted_proxies`
    (IP addresses) only."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted = frozenset(str(ipaddress.ip_address(a)) for a in trusted_proxies)

    def of(self, owner: str, context: grpc.aio.ServicerContext[object, object]) -> str:
        """The client of a call: `owner` (its API key's), else `peer <address>`: the
        address a trusted proxy forwarded for, or the peer's IP address (without its port),
        or gRPC's name of the peer when it has none (a Unix socket)."""
        if owner:
            return owner
        peer = context.peer()
        address = peer_ip(peer)
        if address and address in self._trusted:
            address = forwarded_for(context.invocation_metadata() or ()) or address
        return f"peer {address or peer}"
