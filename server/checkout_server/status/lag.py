"""How far the relay is behind, as the server sees it: the age of the oldest unsent message."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from ..domain import age_s
from ..ports import Outbox


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OutboxLag:
    """Measures the age of the oldest `new` outbox message every `interval_s` (one query, run
    as a supervised round), for the metric checkout_outbox_oldest_unsent_seconds."""

    def __init__(
        self, outbox: Outbox, *, interval_s: float, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self._outbox = outbox
        self._interval_s = interval_s
        self._clock = clock
        self.oldest_unsent_s = 0.0  # 0 when nothing waits

    async def round(self) -> float:
        self.oldest_unsent_s = age_s(await self._outbox.oldest_unsent_created_at(), self._clock())
        return self._interval_s
