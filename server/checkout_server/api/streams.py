"""Refusing a client stream cleanly.

When a client-streaming call (an upload) is refused, the rest of the client's stream is read
and dropped, up to these bounds, before the error is sent. grpc-python's asyncio client
otherwise may report its own INTERNAL "execute_batch" (or "Internal error from Core") instead
of our status when its next write meets the closed stream (grpc/grpc#36066). Nothing read here
is stored or parsed beyond its size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import Message

from .. import errors

DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_S = 5.0


async def drain(messages: AsyncIterator[Message], *, max_bytes: int = DRAIN_MAX_BYTES) -> None:
    """Read and drop what is left of `messages`: at most `max_bytes`, at most DRAIN_MAX_S."""
    drained = 0

    async def read_rest() -> None:
        nonlocal drained
        async for message in messages:
            drained += message.ByteSize()
            if drained > max_bytes:
                return

    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, errors.ServiceError):
        await asyncio.wait_for(read_rest(), DRAIN_MAX_S)
