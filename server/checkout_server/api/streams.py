"""Client and server streams: refusing a client stream cleanly, and running a server stream's
steps in a scope.

When a client-streaming call (an upload) is refused, the rest of the client's stream is read
and dropped, up to these bounds, before the error is sent. grpc-python's asyncio client
otherwise may report its own INTERNAL "execute_batch" (or "Internal error from Core") instead
of our status when its next write meets the closed stream (grpc/grpc#36066). Nothing read here
is stored or parsed beyond its size.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from .. import errors

T = TypeVar("T")

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


async def stepwise(
    items: AsyncIterator[T], scope: Callable[[], AbstractContextManager[None]]
) -> AsyncGenerator[T, None]:
    """What `items` yields, each step of it (and its close) run inside a fresh `scope()`.

    For context variables a stream's wrapper sets (a request id, a span, a principal): set
    around the whole stream they would span its yields, and a stream closed from outside (a
    client gone: asyncio finalizes the generator in a task of its own) would reset them in
    another context, which fails. Set per step, each is reset where it was set."""
    try:
        while True:
            with scope():
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
            yield item
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            with scope():
                await close()
