"""Index creation that works on MongoDB and on FerretDB 1.24 alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.collection import AsyncCollection


async def ensure_indexes(
    collection: AsyncCollection[dict[str, Any]], wanted: Sequence[IndexModel]
) -> None:
    """Create the indexes whose names do not exist yet, one per command. FerretDB 1.24.2
    fails (and drops the connection) on a createIndexes of several indexes that already
    exist ("slice bounds out of range"), which every restart would otherwise send."""
    existing = {index["name"] async for index in await collection.list_indexes()}
    for model in wanted:
        if model.document["name"] not in existing:
            await collection.create_indexes([model])
