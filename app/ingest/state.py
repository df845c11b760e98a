"""Resumable ingest state in SQLite under STATE_DIR: per-file progress and the job table."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.errors import IncompatibleState
from app.ingest.model import FileRecord, FileStatus, IngestOptions, JobStatus, JobView, Progress

SCHEMA_VERSION = 1


class IngestState:
    """Per-file progress and the job table, in SQLite (WAL: readers never wait for the writer).

    One connection shared by the job's threads and the API handlers, serialised by a lock; every statement is
    short (a primary-key lookup, or one transaction per committed batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
        self._db.execute("PRAGMA busy_timeout=30000")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise IncompatibleState(f"{path} was written by a newer Oceano (schema {version}); upgrade Oceano")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS files (
                path TEXT PRIMARY KEY,
                size INTEGER NOT NULL,
                mtime_ns INTEGER NOT NULL,
                content_hash TEXT,
                status TEXT NOT NULL,
                reason TEXT,
                faces INTEGER NOT NULL DEFAULT 0,
                run_id TEXT,
                updated_at REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY,
                path TEXT NOT NULL,
                options TEXT NOT NULL,
                status TEXT NOT NULL,
                created_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                progress TEXT NOT NULL DEFAULT '{}',
                message TEXT,
                attempts INTEGER NOT NULL DEFAULT 0
            );
            CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, created_at);
        """)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # files
    def lookup(self, path: str) -> FileRecord | None:
        with self._lock:
            row = self._db.execute("SELECT path, size, mtime_ns, content_hash, status, reason, faces, run_id "
                                   "FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        return FileRecord(path=row[0], size=row[1], mtime_ns=row[2], content_hash=row[3],
                          status=FileStatus(row[4]), reason=row[5], faces=row[6], run_id=row[7])

    def record_files(self, records: Sequence[FileRecord]) -> None:
        """One transaction for the whole batch."""
        if not records:
            return
        now = time.time()
        rows = [(r.path, r.size, r.mtime_ns, r.content_hash, r.status.value, r.reason, r.faces, r.run_id, now)
                for r in records]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO files (path, size, mtime_ns, content_hash, status, reason, faces, run_id, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                    "size=excluded.size, mtime_ns=excluded.mtime_ns, content_hash=excluded.content_hash, "
                    "status=excluded.status, reason=excluded.reason, faces=excluded.faces, run_id=excluded.run_id, "
                    "updated_at=excluded.updated_at", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def file_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall()
        return {str(status): int(n) for status, n in rows}

    def files(self) -> list[FileRecord]:
        """Every record (tests and tools; not for millions of files)."""
        with self._lock:
            rows = self._db.execute("SELECT path, size, mtime_ns, content_hash, status, reason, faces, run_id "
                                    "FROM files ORDER BY path").fetchall()
        return [FileRecord(path=r[0], size=r[1], mtime_ns=r[2], content_hash=r[3], status=FileStatus(r[4]),
                           reason=r[5], faces=r[6], run_id=r[7]) for r in rows]

    # jobs
    def create_job(self, job_id: str, path: str, options: IngestOptions) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, path, options, status, created_at) VALUES (?, ?, ?, ?, ?)",
                             (job_id, path, json.dumps(options.to_dict()), JobStatus.PENDING.value, time.time()))

    def update_job(self, job_id: str, **fields: Any) -> None:
        allowed = {"status", "started_at", "finished_at", "progress", "message", "attempts"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"cannot update job fields {sorted(set(fields) - allowed)}")
        values = [v.value if isinstance(v, StrEnum) else json.dumps(v.to_dict()) if isinstance(v, Progress)
                  else v for v in fields.values()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))

    def job(self, job_id: str) -> JobView | None:
        with self._lock:
            row = self._db.execute("SELECT id, path, options, status, created_at, started_at, finished_at, "
                                   "progress, message, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def jobs(self, *, limit: int = 50, statuses: Sequence[JobStatus] | None = None,
             oldest_first: bool = False) -> list[JobView]:
        where, args = "", []
        if statuses:
            where = f"WHERE status IN ({', '.join('?' * len(statuses))})"
            args = [s.value for s in statuses]
        order = "ASC" if oldest_first else "DESC"
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, path, options, status, created_at, started_at, finished_at, progress, message, "
                f"attempts FROM jobs {where} ORDER BY created_at {order} LIMIT ?", (*args, limit)).fetchall()
        return [_job_from_row(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _job_from_row(row: Sequence[Any]) -> JobView:
    return JobView(id=row[0], path=row[1], options=IngestOptions.from_dict(json.loads(row[2])),
                   status=JobStatus(row[3]), created_at=row[4], started_at=row[5], finished_at=row[6],
                   progress=Progress.from_dict(json.loads(row[7] or "{}")), message=row[8], attempts=row[9])

