"""The gRPC channel the SDK talks through: address, options, TLS and the bearer token."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from .backoff import Backoff

ADDR_ENV = "CHECKOUT_ADDR"
DEFAULT_ADDR = "localhost:50051"

KiB = 1024
MiB = 1024 * KiB

MAX_CHUNK_BYTES = 4 * MiB
"""The largest upload chunk: the server (and gRPC by default) refuses bigger messages."""

CHANNEL_OPTIONS: Sequence[tuple[str, int | str]] = (
    # A chunk plus its framing; the server refuses anything larger anyway.
    ("grpc.max_send_message_length", MAX_CHUNK_BYTES + 64 * KiB),
    # Predictions and pages of up to 1000 operations; generous, but bounded.
    ("grpc.max_receive_message_length", 64 * MiB),
    # Detect a dead server on long idle calls (WatchStatus) and keep NATs/proxies open.
    # The server allows pings every 10 s without data, so 30 s never earns a GOAWAY.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect within seconds after a server restart (gRPC's default backoff grows to 120 s,
    # longer than the whole RetryPolicy).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.primary_user_agent", "checkout-client/0.1"),
)


def default_address() -> str:
    """`CHECKOUT_ADDR` from the environment, else ``localhost:50051``."""
    return os.environ.get(ADDR_ENV) or DEFAULT_ADDR


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures (UNAVAILABLE) are retried: at most `attempts` calls in all,
    waiting `initial_backoff_s` * `multiplier` ** n (capped at `max_backoff_s`, jittered
    down to half) between them. Applies to uploads (with the same idempotency key) and to read-only
    calls; never to CreateRequest or Cleanup."""

    attempts: int = 6
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._schedule()  # bad backoff bounds fail here, not at the first retry

    def _schedule(self) -> Backoff:
        return Backoff(self.initial_backoff_s, self.max_backoff_s, self.multiplier)

    def backoff_s(self, failed_attempts: int) -> float:
        """The wait after the `failed_attempts`-th failure (1-based): `Backoff`'s equal
        jitter, so the attempts of a default policy span about 12-25 s, enough for a server
        restart, while clients still spread out."""
        return self._schedule().delay_s(failed_attempts)

    def delay_s(self, failed_attempts: int, retry_after_s: float | None) -> float:
        """The wait before the next attempt: the backoff, or the server's retry hint when it
        asks for longer."""
        return max(self.backoff_s(failed_attempts), retry_after_s or 0.0)


NO_RETRY = RetryPolicy(attempts=1)


class _BearerToken(grpc.AuthMetadataPlugin):
    """Adds ``authorization: Bearer <token>`` to every call but Cleanup, which carries the
    admin token itself."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        if context.method_name.rsplit("/", 1)[-1] == "Cleanup":
            callback((), None)
        else:
            callback(self._metadata, None)


def open_channel(
    address: str,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    certificate_chain: bytes | None = None,
    private_key: bytes | None = None,
    token: str | None = None,
    options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to `address` with CHANNEL_OPTIONS (then `options`, which win).

    TLS is used when `tls` is set or `root_certificates` (PEM) or a client certificate are
    given; without `root_certificates` the system roots verify the server. For mTLS pass the
    client's `certificate_chain` and its `private_key` (PEM, both or neither, else a
    ValueError): the server asks for them when it requires client certificates. A `token` is
    sent as a bearer call credential, which gRPC only sends over TLS: asking for one on a
    plaintext channel is a ValueError rather than a token leaked in clear text.
    """
    merged = dict(CHANNEL_OPTIONS)
    merged.update(dict(options))
    channel_options = list(merged.items())
    if (certificate_chain is None) != (private_key is None):
        raise ValueError(
            "a client certificate needs its key: pass certificate_chain and private_key"
        )
    if root_certificates is not None or certificate_chain is not None:
        tls = True
    if not tls:
        if token:
            raise ValueError("a token needs TLS: pass tls=True (and root_certificates)")
        return grpc.aio.insecure_channel(address, options=channel_options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.metadata_call_credentials(_BearerToken(token), name="bearer")
        )
    return grpc.aio.secure_channel(address, credentials, options=channel_options)
