"""API keys for the tests that run a server with authentication on and several clients: a
keys file of uploader keys, one per client name, the metadata that sends a key, and a server
over such a file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from checkout_server.auth.keys import entry, new_key
from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App
from tests.integration.apps import started_app


def uploader_keys(folder: Path, *clients: str) -> dict[str, str]:
    """A new uploader key for each client, written to `folder`/api-keys.toml: client name ->
    key, and "path" -> the file (AUTH_KEYS_FILE)."""
    made = {name: new_key() for name in clients}
    path = folder / "api-keys.toml"
    path.write_text("".join(entry(name, "uploader", key) for name, key in made.items()))
    return {**made, "path": str(path)}


def bearer(key: str) -> tuple[tuple[str, str]]:
    """The call metadata that sends `key`."""
    return (("authorization", f"Bearer {key}"),)


@asynccontextmanager
async def keyed_app(
    settings: ServerSettings, keys: dict[str, str], **changes: Any
) -> AsyncIterator[App]:
    """A started server with authentication on over `keys` (uploader_keys) and `changes` to
    its settings; stopped after."""
    async with started_app(
        settings, auth_enabled=True, auth_keys_file=keys["path"], **changes
    ) as app:
        yield app
