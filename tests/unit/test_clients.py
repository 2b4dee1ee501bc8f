"""Who a call's client is, for the per-client limits (api/clients.py): its key's owner, else
its address; a trusted proxy's x-forwarded-for names the address, anyone else's is ignored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from checkout_server.api.clients import Clients, forwarded_for, peer_ip

pytestmark = pytest.mark.timeout(10)


@dataclass
class Context:
    """The two things Clients reads of a grpc.aio.ServicerContext."""

    _peer: str
    metadata: Sequence[tuple[str, str | bytes]] = field(default_factory=tuple)

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self.metadata


def of(clients: Clients, owner: str, peer: str, *metadata: tuple[str, str | bytes]) -> str:
    return clients.of(owner, Context(peer, metadata))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:10.0.0.7:51234", "10.0.0.7"),
        ("ipv6:[::1]:51234", "::1"),
        ("ipv6:[2001:db8::1]:443", "2001:db8::1"),
        ("unix:/run/checkout.sock", ""),
        ("ipv4:nonsense", ""),
    ],
)
def test_the_ip_of_a_peer(peer: str, ip: str) -> None:
    assert peer_ip(peer) == ip


def test_the_client_is_the_owner_or_else_the_address_without_its_port() -> None:
    clients = Clients()
    assert of(clients, "cam-7", "ipv4:10.0.0.7:51234") == "cam-7"
    assert of(clients, "", "ipv4:10.0.0.7:51234") == "peer 10.0.0.7"
    assert of(clients, "", "ipv4:10.0.0.7:40000") == of(clients, "", "ipv4:10.0.0.7:51234")
    assert of(clients, "", "ipv6:[::1]:51234") == "peer ::1"
    assert of(clients, "", "unix:/run/checkout.sock") == "peer unix:/run/checkout.sock"


def test_a_trusted_proxy_names_the_client_and_nobody_else_does() -> None:
    clients = Clients(["127.0.0.1"])
    forwarded = ("x-forwarded-for", "203.0.113.9, 127.0.0.2")
    # Through Envoy (trusted): the address it appended, the last one.
    assert of(clients, "", "ipv4:127.0.0.1:5000", forwarded) == "peer 127.0.0.2"
    # A client writing the header itself, not through the proxy: its own address.
    assert of(clients, "", "ipv4:10.0.0.7:5000", forwarded) == "peer 10.0.0.7"
    assert of(Clients(), "", "ipv4:127.0.0.1:5000", forwarded) == "peer 127.0.0.1"
    # An owner is the client whatever the header says.
    assert of(clients, "cam-7", "ipv4:127.0.0.1:5000", forwarded) == "cam-7"
    # From the proxy without a usable header: the proxy's address.
    assert of(clients, "", "ipv4:127.0.0.1:5000") == "peer 127.0.0.1"
    assert of(clients, "", "ipv4:127.0.0.1:5000", ("x-forwarded-for", "evil")) == "peer 127.0.0.1"


def test_forwarded_for_takes_the_last_address_of_the_last_header() -> None:
    assert (
        forwarded_for([("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2, ::1")])
        == "::1"
    )
    assert forwarded_for([("x-forwarded-for", b"1.1.1.1")]) == ""  # binary metadata: not it
    assert forwarded_for([("other", "1.1.1.1")]) == ""


def test_a_trusted_proxy_must_be_an_ip_address() -> None:
    with pytest.raises(ValueError, match="envoy"):
        Clients(["envoy"])
