"""The SQLite files under STATE_DIR (API keys, ingest state, erasures, people and clusters) opened one way: the
folder made, write-ahead logging, the durability each asks for, autocommit (callers open their transactions),
one connection usable from any thread (callers serialise its use with a lock), owner-only modes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

MAX_INTEGER = 2**63 - 1  # SQLite's largest INTEGER: a larger Python int given to a query raises OverflowError


class Durability(StrEnum):
    """SQLite's `synchronous` with WAL: NORMAL survives a process crash, FULL a power cut as well."""

    NORMAL = "NORMAL"
    FULL = "FULL"


def open_state_db(path: Path, durability: Durability, *, timeout: float = 30.0) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={durability.value}")
    except BaseException:
        db.close()
        raise
    # chmod, not an open(): closing any other descriptor of the file in this process would drop SQLite's POSIX
    # locks, and with them its view of other writers.
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
    return db


class StateFile:
    """One state file shared by a process's threads: one connection behind a lock, its schema run at open
    (CREATE ... IF NOT EXISTS), `_run` for a statement and `_transaction` for several at once."""

    def __init__(self, path: Path, durability: Durability, schema: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_state_db(path, durability)
        try:
            self._db.executescript(schema)
        except BaseException:
            self._db.close()
            raise

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._db)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                out = work(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return out

        return self._run(run)

    def close(self) -> None:
        with self._lock:
            self._db.close()
