"""The hours that hold status records, so that a listing reads the records one hour at a time.

FerretDB 1.24 sorts in Go after reading every document its filter matches, so a listing
sorted over the whole collection costs in proportion to the collection. Each status record
carries the UTC hour it was created in (`hour`, outbox/document.py). A listing reads the
hours newest first, each an equality filter, which the dev stack's PostgreSQL serves from an
index (devstack/equality_indexes.sql) and MongoDB from `hour_created`. Then it sorts that
hour's records only. This collection (`<status records>_hours`) names the hours that have
records, one document each (`_id` the hour), so a listing never probes an empty one.

Every writer of a status record registers its hour first; a unique `_id` decides races. Each
remembers for a minute what it registered, so its uploads cost this write once a minute.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

# How long a writer trusts that an hour it registered is still registered: Cleanup removes
# hours older than KEPT_BY_CLEANUP only, so this covers every record written now.
REMEMBERED_S = 60.0
# The newest hours Cleanup leaves registered (a writer may be registering one right now).
KEPT_BY_CLEANUP = 3
_HOUR = re.compile(r"\d{10}")

Document = dict[str, Any]


def hours_of(statuses: AsyncCollection[Document]) -> AsyncCollection[Document]:
    """The hours collection of these status records."""
    return statuses.database[f"{statuses.name}_hours"]


class MongoStatusHours:
    """The registered hours of one status collection; errors are PyMongo's (the adapters
    that use it translate them)."""

    def __init__(
        self,
        statuses: AsyncCollection[Document],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hours = hours_of(statuses)
        self._clock = clock
        self._registered: dict[str, float] = {}  # hour -> when this writer registered it

    async def register(self, hours: Iterable[str]) -> None:
        """Make sure these hours are registered (before their records are written)."""
        now = self._clock()
        self._registered = {h: at for h, at in self._registered.items() if now - at < REMEMBERED_S}
        for hour in sorted(set(hours) - self._registered.keys()):
            with contextlib.suppress(DuplicateKeyError):  # another writer's
                await self._hours.insert_one({"_id": hour})
            self._registered[hour] = now

    async def newest_first(self) -> list[str]:
        """Every registered hour, newest first (a few thousand a year: read whole)."""
        found = self._hours.find({}, {"_id": 1})
        hours = [str(d["_id"]) async for d in found]
        return sorted((h for h in hours if _HOUR.fullmatch(h)), reverse=True)

    async def is_marked(self, mark: str) -> bool:
        return await self._hours.find_one({"_id": mark}) is not None

    async def mark(self, mark: str) -> None:
        """Record a fact about the records that is not an hour (a migration done)."""
        with contextlib.suppress(DuplicateKeyError):
            await self._hours.insert_one({"_id": mark})

    async def forget_old(self) -> None:
        """After Cleanup: unregister all but the newest KEPT_BY_CLEANUP hours."""
        old = (await self.newest_first())[KEPT_BY_CLEANUP:]
        if old:
            await self._hours.delete_many({"_id": {"$in": old}})
        self._registered.clear()
