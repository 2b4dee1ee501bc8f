"""API keys for the tests that run a server with authentication on and several clients: a
keys file of uploader keys, one per client name, and the metadata that sends a key."""

from __future__ import annotations

from pathlib import Path

from checkout_server.auth.keys import entry, new_key


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
