"""The SQLite files under STATE_DIR (API keys, ingest state, erasures, people and clusters) opened one way: the
folder made, write-ahead logging, the durability each asks for, autocommit (callers open their transactions),
one connection usable from any thread (callers serialise its use with a lock), owner-only modes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from enum import StrEnum
from pathlib import Path


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
