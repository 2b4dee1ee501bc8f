"""A server of a test's own: started with its settings, stopped after (1 s of grace)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App, create_app


@asynccontextmanager
async def started_app(settings: ServerSettings, **changes: Any) -> AsyncIterator[App]:
    """A server with `settings` and any `changes` to them, started for the block."""
    app = await create_app(settings.replace(**changes) if changes else settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=1.0)
