"""The pace of a client's upload stream: a stream that sends nothing for too long, or too little
over a window, is cut (UploadStalled), so that it cannot hold a slot and its buffers for as long
as its deadline allows.

Only the time spent waiting for the client counts: while the server itself is busy (a part on
its way to storage, a database call) it reads nothing, gRPC flow control holds the client
back, and that is not the client's fault. Over each `window_s` of that waiting, the stream must
have sent `min_bytes_per_s * window_s` bytes; a window is judged when a message arrives after
it is over, and a client that sends nothing at all is cut by the idle timeout meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from .. import errors

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Pace:
    """What a client's stream must keep up."""

    idle_timeout_s: float | None = None  # the longest it may send nothing; None: no limit
    min_bytes_per_s: int = 0  # 0: no minimum
    window_s: float = 60.0

    @property
    def unlimited(self) -> bool:
        return self.idle_timeout_s is None and not self.min_bytes_per_s


async def paced(
    items: AsyncIterator[T],
    pace: Pace,
    *,
    size: Callable[[T], int],
    on_stall: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[T]:
    """What `items` yields, raising UploadStalled (after calling `on_stall`) when the client
    sends nothing for `pace.idle_timeout_s`, or less than `pace.min_bytes_per_s` (each item
    counts `size(item)` bytes) over a window of `pace.window_s` spent waiting for it."""
    waited = 0.0  # in the current window
    received = 0
    while True:
        started = clock()
        try:
            async with asyncio.timeout(pace.idle_timeout_s):
                item = await anext(items)
        except StopAsyncIteration:
            return
        except TimeoutError:
            on_stall()
            raise errors.UploadStalled(
                f"нет данных {pace.idle_timeout_s:g} с", idle_timeout_s=f"{pace.idle_timeout_s:g}"
            ) from None
        waited += clock() - started
        received += size(item)
        if pace.min_bytes_per_s and waited >= pace.window_s:
            if received < pace.min_bytes_per_s * waited:
                on_stall()
                raise errors.UploadStalled(
                    f"{received} байт за {waited:.0f} с, нужно не меньше "
                    f"{pace.min_bytes_per_s} байт/с",
                    min_bytes_per_s=str(pace.min_bytes_per_s),
                )
            waited, received = 0.0, 0
        yield item
