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
a key added or removed counts within that interval, no restart needed. After start the ring
fails closed: a file deleted, unreadable, empty or invalid means no keys at all (every call
that needs one is refused) until a valid file is back; each such change is logged once, as
an error, and counted by its reason (RELOAD_ERROR_REASONS). Whoever subscribed (the auth
interceptor) is told, on the event loop, whenever the keys in force change, so that streams
opened with a key no longer in force end (api/auth.py). Change the file atomically (write a
new file, then rename it over the old one): a reader that catches an editor's truncation
sees an empty file, which refuses every key until the next round reads the whole one.
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
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..domain import Principal, Role
from ..errors import ConfigError

log = logging.getLogger(__name__)

CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_PREFIX = "ck_"
# Why a keys file was refused after start, each counted in `KeyRing.reload_errors`.
RELOAD_ERROR_REASONS = ("missing", "unreadable", "empty", "invalid")


class NoKeys(ConfigError):
    """A keys file that holds no [[keys]] entry (an empty file among them)."""


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
        raise NoKeys(f"AUTH_KEYS_FILE: {source} holds no keys")
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
    """The file's stamp and text; OSError or UnicodeDecodeError when it cannot be read."""
    stamp = _Stamp.of(path)  # before reading: a change during the read is seen next time
    return stamp, path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Loaded:
    """A reload that read a valid file."""

    stamp: _Stamp
    by_hash: dict[str, Principal]


@dataclass(frozen=True)
class _Refused:
    """A reload that found no valid file: why (one of RELOAD_ERROR_REASONS, and what was
    wrong), and the stamp of the file it refused (None: it could not even stat one)."""

    stamp: _Stamp | None
    reason: str
    error: str


class KeyRing:
    """The keys of AUTH_KEYS_FILE, kept current by `round` (a supervised loop)."""

    def __init__(self, path: Path, *, reload_interval_s: float) -> None:
        """Reads the file now (blocking: at start-up, before serving); ConfigError if it
        cannot be read or is invalid."""
        self._path = path
        self._interval_s = reload_interval_s
        try:
            stamp, text = _read(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"AUTH_KEYS_FILE: cannot read {path}: {exc}") from None
        self._stamp: _Stamp | None = stamp
        self._by_hash = parse_keys(text, source=str(path))
        # Why the keys file is refused now (no keys are in force meanwhile), None while valid.
        self._refused: _Refused | None = None
        self._subscribers: list[Callable[[], None]] = []
        self.reloads_total = 0  # successful re-reads after start
        self.reload_errors: Counter[str] = Counter()  # refusals after start, by reason
        log.info("api keys loaded", extra={"keys": len(self._by_hash), "path": str(path)})

    def __len__(self) -> int:
        return len(self._by_hash)

    @property
    def reload_errors_total(self) -> int:
        return sum(self.reload_errors.values())

    @property
    def refused(self) -> bool:
        """Whether the file is refused now (deleted, unreadable, empty or invalid): no key is
        in force until it is valid again."""
        return self._refused is not None

    def authenticate(self, token: str) -> Principal | None:
        """The principal of `token`, or None when no key of the file is `token`."""
        return self._by_hash.get(hash_key(token))

    def subscribe(self, changed: Callable[[], None]) -> None:
        """Call `changed()` on the event loop, without arguments, each time the keys in force
        change (a key added, removed or moved to another client or role; all of them gone
        when the file is refused). It must not block."""
        self._subscribers.append(changed)

    async def round(self) -> float:
        """Re-read the file if it changed (off the event loop); then, on the loop, put what
        it holds in force, or no keys at all when it is refused."""
        outcome = await asyncio.to_thread(self._read_if_changed)
        if outcome is not None:
            self._apply(outcome)
        return self._interval_s

    def _read_if_changed(self) -> _Loaded | _Refused | None:
        """What the file holds now, None when it has not changed since the last look."""
        path, source = self._path, str(self._path)
        try:
            stamp = _Stamp.of(path)
        except FileNotFoundError:
            return _Refused(None, "missing", f"AUTH_KEYS_FILE: {source} does not exist")
        except OSError as exc:
            return _Refused(None, "unreadable", f"AUTH_KEYS_FILE: cannot read {source}: {exc}")
        if stamp == self._stamp:
            return None
        try:
            stamp, text = _read(path)
        except FileNotFoundError:
            return _Refused(None, "missing", f"AUTH_KEYS_FILE: {source} does not exist")
        except (OSError, UnicodeDecodeError) as exc:
            return _Refused(stamp, "unreadable", f"AUTH_KEYS_FILE: cannot read {source}: {exc}")
        try:
            return _Loaded(stamp, parse_keys(text, source=source))
        except NoKeys as exc:
            return _Refused(stamp, "empty", str(exc))
        except ConfigError as exc:
            return _Refused(stamp, "invalid", str(exc))

    def _apply(self, outcome: _Loaded | _Refused) -> None:
        """Put a reload's outcome in force (on the loop: a call sees the keys before or after
        it, and the subscribers hear of it before any other call runs)."""
        before = self._by_hash
        self._stamp = outcome.stamp
        if isinstance(outcome, _Loaded):
            self._by_hash = outcome.by_hash
            self.reloads_total += 1
            if self._refused is not None:
                log.warning(
                    "api keys file valid again; its keys are in force",
                    extra={"keys": len(outcome.by_hash), "path": str(self._path)},
                )
            else:
                log.info(
                    "api keys reloaded",
                    extra={"keys": len(outcome.by_hash), "path": str(self._path)},
                )
            self._refused = None
        else:
            if outcome == self._refused:
                return  # the same refusal as last round (a file still missing): told once
            self._refused = outcome
            self._by_hash = {}
            self.reload_errors[outcome.reason] += 1
            log.error(
                "api keys file refused: no key is accepted until it is valid again: %s",
                outcome.error,
                extra={"reason": outcome.reason, "path": str(self._path)},
            )
        if self._by_hash != before:
            for changed in self._subscribers:
                changed()


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
