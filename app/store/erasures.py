"""ErasureJournal: every erasure recorded before its first point or crop goes (STATE_DIR/erasures.sqlite3).

An erasure removes points from the store, then their thumbnails, one file at a time: a crash in between would
leave crops of faces that no longer exist, and a retried DELETE would find no point and answer 404. So the ids are
journaled first (SQLite, synchronous=FULL: on disk once `begin` returns) and the entry is marked finished after
the last crop. Start-up finishes the unfinished ones before any writer runs; a retried DELETE finishes a half-done
one. A finished erasure is kept as a receipt for RECEIPT_SECONDS, so that a retried DELETE answers as the first one
did; receipts are keyed by a hash of what was erased (`erasure_key`), never by the subject's name or the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.statedb import Durability, open_state_db
from app.store.model import PointQuery

logger = logging.getLogger(__name__)

ERASURES_FILE = "erasures.sqlite3"
RECEIPT_SECONDS = 24 * 3600.0  # how long a finished erasure answers a retried DELETE


def erasure_key(query: PointQuery | None = None, *, face_id: str | None = None) -> str:
    """What an erasure removes, hashed: the faces a query matches, or one face by id."""
    what = f"id={face_id}" if query is None else f"file={query.file!r} subject={query.subject!r} origin={query.origin}"
    return hashlib.sha256(what.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Erasure:
    key: str
    ids: list[str]
    finished: bool


class ErasureJournal:
    """Thread-safe; one process writes it (the one that owns the store's writers)."""

    def __init__(self, path: Path, *, keep_receipts: float = RECEIPT_SECONDS) -> None:
        self.path = path
        self.keep_receipts = keep_receipts
        self._lock = threading.Lock()
        self._db = open_state_db(path, Durability.FULL)  # an intent is on disk before the first point goes
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS erasures (key TEXT PRIMARY KEY, ids TEXT NOT NULL, "
            "started_at REAL NOT NULL, finished_at REAL, receipt INTEGER NOT NULL)"
        )
        self.prune()

    def begin(self, ids: Sequence[str], key: str | None = None) -> str:
        """Record an erasure of `ids` before any of them goes; returns its key for `finish`. `key`: what a retried
        DELETE names (erasure_key); None for erasures nobody retries (the stale faces of a replaced file)."""
        receipt = key is not None
        key = key or f"anonymous:{uuid.uuid4().hex}"
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO erasures (key, ids, started_at, finished_at, receipt) "
                "VALUES (?, ?, ?, NULL, ?)",
                (key, json.dumps(list(ids)), time.time(), int(receipt)),
            )
        return key

    def finish(self, key: str) -> None:
        """The erasure is complete: kept as a receipt when it was named, else forgotten."""
        with self._lock:
            self._db.execute("DELETE FROM erasures WHERE key = ? AND receipt = 0", (key,))
            self._db.execute("UPDATE erasures SET finished_at = ? WHERE key = ?", (time.time(), key))

    def find(self, key: str) -> Erasure | None:
        with self._lock:
            row = self._db.execute("SELECT key, ids, finished_at FROM erasures WHERE key = ?", (key,)).fetchone()
        return None if row is None else Erasure(row[0], json.loads(row[1]), row[2] is not None)

    def unfinished(self) -> list[Erasure]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, ids FROM erasures WHERE finished_at IS NULL ORDER BY started_at"
            ).fetchall()
        return [Erasure(key, json.loads(ids), False) for key, ids in rows]

    def prune(self) -> None:
        """Forget receipts older than `keep_receipts`."""
        with self._lock:
            self._db.execute(
                "DELETE FROM erasures WHERE finished_at IS NOT NULL AND finished_at < ?",
                (time.time() - self.keep_receipts,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
