"""Status records written by a test directly, as the server's writers write them."""

from __future__ import annotations

from collections.abc import Sequence

from pymongo.asynchronous.collection import AsyncCollection

from checkout_server.adapters.mongo_status_hours import MongoStatusHours
from checkout_server.outbox.document import HOUR, Document


async def insert_records(statuses: AsyncCollection[Document], records: Sequence[Document]) -> None:
    """Insert these status records after registering their hours (a record in an hour that
    is not registered is never listed: adapters/mongo_status_hours.py)."""
    await MongoStatusHours(statuses).register(r[HOUR] for r in records)
    await statuses.insert_many(records)
