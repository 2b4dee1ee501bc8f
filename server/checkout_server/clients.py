"""Clients shared by the two processes' wiring (the server's app.py and the relay's app.py)."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from .config import Settings

Document = dict[str, Any]


def mongo_client(settings: Settings, *, appname: str) -> AsyncMongoClient[Document]:
    """The one MongoDB client of a process (server or relay), with bounded timeouts."""
    timeout = settings.mongo_timeout_ms
    return AsyncMongoClient(
        settings.mongo_uri,
        tz_aware=True,
        appname=appname,
        serverSelectionTimeoutMS=timeout,
        connectTimeoutMS=timeout,
        socketTimeoutMS=timeout * 2,
    )
