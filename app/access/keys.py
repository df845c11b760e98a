"""API keys: named, scoped, stored hashed in STATE_DIR/keys.sqlite3.

A key is `oc_` + 32 random bytes (URL-safe base64); only its sha256 is stored, so the file gives nothing away and
a key is shown once, when it is created. The file is SQLite in WAL mode: the service reads it while
`python -m app.keys` writes it. The service authenticates against an in-memory copy (no disk on a request's
path); a watcher thread reloads the copy when another process changed the file (SQLite's data_version, checked
every second) and writes last-used times back at most every few seconds. Nothing else in the service process may
open the file: closing any descriptor of it drops the process's SQLite locks (POSIX), and with them its view of
what other processes write."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from app.errors import Conflict, InvalidRequest, NotFound
from app.statedb import Durability, open_state_db

logger = logging.getLogger(__name__)

KEYS_FILE = "keys.sqlite3"
KEY_PREFIX = "oc_"
KEY_PATTERN = re.compile(r"oc_[A-Za-z0-9_\-]{32,128}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
CHECK_EVERY = 1.0  # seconds between looks at the file for changes made by another process
TOUCH_EVERY = 5.0  # seconds between writes of last-used times (not one write per request)


class Scope(StrEnum):
    SEARCH = "search"  # search, analyze, heads, thumbnails, the page's form, /status
    WRITE = "write"  # index and delete faces, ingest jobs
    ADMIN = "admin"  # everything, and key management


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as it may be shown: never the key itself."""

    name: str
    scopes: frozenset[Scope]
    created: float
    last_used: float | None = None

    def allows(self, needed: Scope) -> bool:
        return Scope.ADMIN in self.scopes or needed in self.scopes

    @property
    def scope_list(self) -> list[Scope]:
        return sorted(self.scopes, key=list(Scope).index)


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    scopes = set()
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            try:
                scopes.add(Scope(part.strip().lower()))
            except ValueError:
                raise InvalidRequest(
                    f"unknown scope {part.strip()!r}: use {', '.join(s.value for s in Scope)}"
                ) from None
    if not scopes:
        raise InvalidRequest(f"give at least one scope: {', '.join(s.value for s in Scope)}")
    return frozenset(scopes)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            "a key name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit; got {name[:80]!r}"
        )
    return name


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The keys of one STATE_DIR. Thread-safe; several processes may open the same file."""

    def __init__(self, path: Path, *, check_every: float = CHECK_EVERY, touch_every: float = TOUCH_EVERY) -> None:
        self.path = path
        self.check_every = check_every
        self.touch_every = touch_every
        self._lock = threading.Lock()
        self._by_hash: dict[str, KeyInfo] = {}
        self._by_prefix: dict[str, str] = {}  # the first 16 hex digits of a hash -> the hash
        self._used: dict[str, float] = {}  # key hash -> last use not yet written to the file
        self._used_lock = threading.Lock()  # only around _used, never across I/O: requests take it
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._last_touch = time.monotonic()
        self._missing = False  # the file was found deleted while keys were loaded (logged once)
        self._db = self._connect()
        self._reload()

    # ------------------------------------------------------------------ file
    def _connect(self) -> sqlite3.Connection:
        db = open_state_db(self.path, Durability.NORMAL, timeout=10.0)  # hashes only, still owner-only
        db.execute(
            "CREATE TABLE IF NOT EXISTS api_keys (name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, "
            "scopes TEXT NOT NULL, created REAL NOT NULL, last_used REAL)"
        )
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        return db

    def _reload(self) -> None:
        """Read every key (the table is small); the caller holds the lock or is the constructor."""
        rows = self._db.execute("SELECT name, hash, scopes, created, last_used FROM api_keys").fetchall()
        self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
        self._by_hash = {
            h: KeyInfo(
                name=name,
                scopes=frozenset(Scope(s) for s in scopes.split(",") if s),
                created=created,
                last_used=last_used,
            )
            for name, h, scopes, created, last_used in rows
        }
        self._by_prefix = {h[:16]: h for h in self._by_hash}

    def refresh(self) -> bool:
        """Reload when another process changed the file (or replaced it); True when it did."""
        with self._lock:
            try:
                st = os.stat(self.path)
                replaced = (st.st_dev, st.st_ino) != self._identity
                self._missing = False
            except FileNotFoundError:
                if self._by_hash:
                    # Deleted under a running service: an empty file in its place would silently drop every key
                    # (protected mode). The keys loaded are kept until a file is there again.
                    if not self._missing:
                        logger.error(
                            "the API keys file %s was deleted while the service runs: the %d key(s) loaded are kept; "
                            "restore the file (or create keys again with python -m app.keys) to change them",
                            self.path,
                            len(self._by_hash),
                        )
                    self._missing = True
                    return False
                replaced = True
            if replaced:
                self._db.close()
                self._db = self._connect()
            elif self._db.execute("PRAGMA data_version").fetchone()[0] == self._version:
                return False
            self._reload()
            return True

    def flush(self) -> None:
        """Write the last-used times gathered since the last flush."""
        with self._lock:
            with self._used_lock:
                used, self._used = self._used, {}
            self._last_touch = time.monotonic()
            if used:
                self._db.executemany(
                    "UPDATE api_keys SET last_used = max(coalesce(last_used, 0), ?) WHERE hash = ?",
                    [(t, h) for h, t in used.items()],
                )

    # ------------------------------------------------------------------ watcher (the service)
    def watch(self) -> None:
        """Start the thread that picks up changes made by other processes and writes last-used times."""
        self._watcher = threading.Thread(target=self._watch, name="key-store", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every):
            try:
                if self.refresh():
                    logger.info("API keys reloaded: %d key(s)", len(self._by_hash))
                if time.monotonic() - self._last_touch >= self.touch_every:
                    self.flush()
            except sqlite3.Error as exc:  # e.g. the file locked for longer than the timeout: try again later
                logger.warning("could not read %s: %s", self.path, exc)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(10)
        try:
            self.flush()
        finally:
            with self._lock:
                self._db.close()

    # ------------------------------------------------------------------ keys
    def create(self, name: str, scopes: Iterable[str]) -> tuple[KeyInfo, str]:
        """A new key: (its info, the key itself, to be shown once)."""
        check_name(name)
        chosen = parse_scopes(scopes)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        info = KeyInfo(name=name, scopes=chosen, created=time.time())
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO api_keys (name, hash, scopes, created) VALUES (?, ?, ?, ?)",
                    (name, key_hash(key), ",".join(info.scope_list), info.created),
                )
            except sqlite3.IntegrityError:
                raise Conflict(
                    f"a key named {name!r} exists already: revoke it first, or choose another name"
                ) from None
            self._reload()
        logger.info("API key %r created (scopes: %s)", name, ",".join(info.scope_list))
        return info, key

    def revoke(self, name: str) -> KeyInfo:
        with self._lock:
            found = [info for info in self._list() if info.name == name]
            if not found:
                raise NotFound(f"no API key named {name!r}")
            self._db.execute("DELETE FROM api_keys WHERE name = ?", (name,))
            self._reload()
        logger.info("API key %r revoked", name)
        return found[0]

    def _list(self) -> list[KeyInfo]:
        self._reload()
        return sorted(self._by_hash.values(), key=lambda k: (k.created, k.name))

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first, with its last use (also one not yet written to the file)."""
        with self._lock:
            infos = self._list()
            with self._used_lock:
                pending = {self._by_hash[h].name: t for h, t in self._used.items() if h in self._by_hash}
        return [
            replace(i, last_used=max(i.last_used or 0.0, pending[i.name])) if i.name in pending else i for i in infos
        ]

    def has_keys(self) -> bool:
        """Whether any key exists (no key at all: the service is in protected mode)."""
        return bool(self._by_hash)

    def authenticate(self, key: str) -> KeyInfo | None:
        """The key's info, or None for an unknown or revoked key. In memory; records the use."""
        if not KEY_PATTERN.fullmatch(key):
            return None
        digest = key_hash(key)
        stored = self._by_prefix.get(digest[:16], "")  # the lookup's timing tells a prefix of a hash at most
        if not hmac.compare_digest(stored, digest):
            return None
        info = self._by_hash.get(stored)
        if info is not None:
            with self._used_lock:
                self._used[digest] = time.time()
        return info
