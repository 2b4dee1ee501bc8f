"""API keys: whose a bearer token is and what its role may do, from a file of hashed keys.

The file (AUTH_KEYS_FILE) is TOML with one table per key:

    [[keys]]
    client = "camera-gateway"   # who uploads: the owner of its events; [A-Za-z0-9._-], 1-64
    role = "uploader"           # uploader | reader | admin
    sha256 = "<64 hex digits>"  # SHA-256 of the key (never the key itself)

A client may have several keys (to rotate them: add the new one, move the client over,
remove the old one). Keys are 256-bit random tokens made by `checkout-keys new`, so a single
SHA-256 stores them safely: a slow password hash protects guessable secrets, and there is
nothing to guess in these. A token is checked by hashing it and looking the hash up.

The server reads the file at start (a missing or invalid file stops it), then checks it every
AUTH_RELOAD_INTERVAL_S and reads it again when its modification time, size or inode changed:
a key added or removed counts within that interval, no restart needed. A file that became
invalid (or empty) is logged and the keys read before stay in force until it is mended.
Change it atomically where you can (write a new file, then rename it over the old one), so
the server never reads half of it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..domain import Principal, Role
from ..errors import ConfigError

log = logging.getLogger(__name__)

CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_PREFIX = "ck_"


def hash_key(key: str) -> str:
    """The SHA-256 (hex) under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe, with a recognisable prefix (for secret
    scanners and people)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_keys(text: str, *, source: str) -> dict[str, Principal]:
    """The principals of a keys file by key hash; ConfigError naming `source` and the entry
    when anything is wrong (nothing of a bad file is used)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"AUTH_KEYS_FILE: {source} is not valid TOML: {exc}") from None
    entries = data.get("keys", [])
    unknown = set(data) - {"keys"}
    if unknown or not isinstance(entries, list):
        raise ConfigError(
            f"AUTH_KEYS_FILE: {source} must hold only [[keys]] tables "
            f"(found {sorted(unknown) or type(entries).__name__})"
        )
    if not entries:  # also what a reader sees while an editor truncates and rewrites it
        raise ConfigError(f"AUTH_KEYS_FILE: {source} holds no keys")
    by_hash: dict[str, Principal] = {}
    for number, entry in enumerate(entries, start=1):
        digest, principal = _parse_entry(entry, where=f"{source}, key {number}")
        if digest in by_hash:
            raise ConfigError(f"AUTH_KEYS_FILE: {source}, key {number}: the same sha256 twice")
        by_hash[digest] = principal
    return by_hash


def _parse_entry(entry: Any, *, where: str) -> tuple[str, Principal]:
    if not isinstance(entry, Mapping) or set(entry) != {"client", "role", "sha256"}:
        raise ConfigError(f"AUTH_KEYS_FILE: {where}: needs exactly client, role and sha256")
    client, role, digest = entry["client"], entry["role"], entry["sha256"]
    if not isinstance(client, str) or not CLIENT_NAME.fullmatch(client):
        raise ConfigError(f"AUTH_KEYS_FILE: {where}: client must match {CLIENT_NAME.pattern}")
    if role not in {r.value for r in Role}:
        raise ConfigError(
            f"AUTH_KEYS_FILE: {where}: role must be one of {', '.join(r.value for r in Role)}"
        )
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise ConfigError(f"AUTH_KEYS_FILE: {where}: sha256 must be 64 lowercase hex digits")
    return digest, Principal(client=client, role=Role(role))


@dataclass(frozen=True)
class _Stamp:
    """What tells that a file changed without reading it."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> _Stamp:
        stat = path.stat()
        return cls(stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _read(path: Path) -> tuple[_Stamp, str]:
    try:
        stamp = _Stamp.of(path)  # before reading: a change during the read is seen next time
        return stamp, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"AUTH_KEYS_FILE: cannot read {path}: {exc}") from None


class KeyRing:
    """The keys of AUTH_KEYS_FILE, kept current by `round` (a supervised loop)."""

    def __init__(self, path: Path, *, reload_interval_s: float) -> None:
        """Reads the file now (blocking: at start-up, before serving); ConfigError if it
        cannot be read or is invalid."""
        self._path = path
        self._interval_s = reload_interval_s
        self._stamp, text = _read(path)
        self._by_hash = parse_keys(text, source=str(path))
        self.reloads_total = 0  # successful re-reads after start
        self.reload_errors_total = 0
        log.info("api keys loaded", extra={"keys": len(self._by_hash), "path": str(path)})

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of `token`, or None when no key of the file is `token`."""
        return self._by_hash.get(hash_key(token))

    async def round(self) -> float:
        """Re-read the file if it changed; a read or parse failure keeps the keys in force."""
        await asyncio.to_thread(self._reload_if_changed)
        return self._interval_s

    def _reload_if_changed(self) -> None:
        try:
            if _Stamp.of(self._path) == self._stamp:
                return
            stamp, text = _read(self._path)
            by_hash = parse_keys(text, source=str(self._path))
        except (OSError, ConfigError) as exc:
            self.reload_errors_total += 1
            log.error("api keys not reloaded; the previous keys stay in force: %s", exc)
            return
        # One assignment each: a call racing this reload sees the old or the new keys.
        self._stamp, self._by_hash = stamp, by_hash
        self.reloads_total += 1
        log.info("api keys reloaded", extra={"keys": len(by_hash), "path": str(self._path)})


def entry(client: str, role: str, key: str) -> str:
    """The [[keys]] table of AUTH_KEYS_FILE that admits `key` for `client` with `role`."""
    return f'[[keys]]\nclient = "{client}"\nrole = "{role}"\nsha256 = "{hash_key(key)}"\n'


def main(argv: list[str] | None = None) -> int:
    """`checkout-keys`: make an API key and the entry that admits it."""
    parser = argparse.ArgumentParser(
        prog="checkout-keys",
        description="Make API keys for checkout-server's AUTH_KEYS_FILE.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser(
        "new",
        help="print a new key (stderr) and its [[keys]] entry for AUTH_KEYS_FILE (stdout)",
    )
    new.add_argument("--client", required=True, help="who uses the key: [A-Za-z0-9._-], 1-64")
    new.add_argument("--role", required=True, choices=[r.value for r in Role])
    hashed = commands.add_parser(
        "entry", help="the [[keys]] entry of an existing key read from stdin"
    )
    hashed.add_argument("--client", required=True)
    hashed.add_argument("--role", required=True, choices=[r.value for r in Role])
    args = parser.parse_args(argv)
    if not CLIENT_NAME.fullmatch(args.client):
        parser.error(f"--client must match {CLIENT_NAME.pattern}")
    if args.command == "new":
        key = new_key()
        print(f"# the key for {args.client} (shown once; store it as a secret):", file=sys.stderr)
        print(key, file=sys.stderr)
    else:
        key = sys.stdin.readline().strip()
        if not key:
            parser.error("no key on stdin")
    sys.stdout.write(entry(args.client, args.role, key))
    sys.stdout.flush()
    return os.EX_OK


if __name__ == "__main__":
    sys.exit(main())
