"""Resumable ingest state in SQLite under STATE_DIR: per-file progress and the job table.

Both are kept per collection key (`collection_key`): the store backend and where it lives, the collection name
and the model pack's fingerprint. A file done for one collection is not done for another: after COLLECTION_NAME
or the pack changes, the same folder is ingested again in full into the new collection."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.config import Settings
from app.errors import IncompatibleState
from app.ingest.model import FileRecord, FileStatus, IngestOptions, JobKind, JobStatus, JobView, Progress
from app.statedb import Durability, open_state_db

SCHEMA_VERSION = 3  # 3: jobs.kind (ingest | cluster); every job before it was an ingest job
# Schema 1 keyed files by path alone: which collection and pack its rows were made for cannot be known. They
# are kept under this key, which no run has (real keys start with "edge:" or "server:"), so every file is read
# once more after the upgrade. That is safe: point ids are uuid5(content sha256, face index), so faces that are
# already in the collection are written again under the same ids, never twice.
LEGACY_KEY = "legacy:schema-1"

_FILES = """
    CREATE TABLE files (
        collection TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        content_hash TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        faces INTEGER NOT NULL DEFAULT 0,
        run_id TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (collection, path)
    )"""
_JOBS = f"""
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        options TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        progress TEXT NOT NULL DEFAULT '{{}}',
        message TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        collection TEXT NOT NULL DEFAULT '{LEGACY_KEY}',
        kind TEXT NOT NULL DEFAULT 'ingest'
    )"""
_JOBS_INDEX = "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, created_at)"
# Files per status for /metrics: counted from this index alone (~0.1 s at 1M files, not seconds from the table).
_FILES_INDEX = "CREATE INDEX IF NOT EXISTS files_by_status ON files(collection, status)"
_FILE_COLUMNS = "path, size, mtime_ns, content_hash, status, reason, faces, run_id"
_JOB_COLUMNS = (
    "id, path, options, status, created_at, started_at, finished_at, progress, message, attempts, collection, kind"
)


def collection_key(settings: Settings, fingerprint: str) -> str:
    """The identity of the collection a run writes to, as the state records it: the backend (the embedded
    shard's QDRANT_PATH, or the server's QDRANT_URL without credentials), COLLECTION_NAME, and the fingerprint of
    the model pack whose embeddings it holds. Built here only."""
    if settings.qdrant_url:
        url = urlsplit(settings.qdrant_url.strip())
        host = (url.hostname or "") + (f":{url.port}" if url.port else "")
        where = f"server:{url.scheme.lower()}://{host}{url.path.rstrip('/')}"
    else:
        where = f"edge:{settings.qdrant_path.expanduser().resolve()}"
    return f"{where}|{settings.collection_name}|{fingerprint}"


class IngestState:
    """Per-file progress and the job table, in SQLite (WAL: readers never wait for the writer).

    One connection shared by the job's threads and the API handlers, serialised by a lock; every statement is
    short (a primary-key lookup, or one transaction per committed batch). Files and jobs belong to a collection
    key (`collection_key`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_state_db(path, Durability.NORMAL)  # with WAL: durable across process crashes
        try:
            self._db.execute("PRAGMA busy_timeout=30000")
            if self._check_version() < SCHEMA_VERSION:
                self._transaction(self._create_or_migrate)
            self._db.execute(_FILES_INDEX)  # added after schema 2 was set: built once on older files
        except BaseException:
            self._db.close()
            raise

    def _check_version(self) -> int:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise IncompatibleState(f"{self.path} was written by a newer Oceano (schema {version}); upgrade Oceano")
        return version

    def _create_or_migrate(self) -> None:
        """Inside one write transaction, so a crash leaves the file as it was (DDL and user_version are part of
        it), and a second process opening it at the same time waits, then finds the work done."""
        version = self._check_version()
        if version == SCHEMA_VERSION:
            return
        if version == 2:  # schema 3 only adds the job's kind
            self._db.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'ingest'")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "files" in tables:  # schema 1 (or 0: version 1's tables, killed before it set user_version)
            self._db.execute("ALTER TABLE files RENAME TO files_v1")
            self._db.execute(_FILES)
            self._db.execute(
                f"INSERT INTO files (collection, {_FILE_COLUMNS}, updated_at) "
                f"SELECT ?, {_FILE_COLUMNS}, updated_at FROM files_v1",
                (LEGACY_KEY,),
            )
            self._db.execute("DROP TABLE files_v1")
        else:
            self._db.execute(_FILES)
        if "jobs" in tables:
            self._db.execute(f"ALTER TABLE jobs ADD COLUMN collection TEXT NOT NULL DEFAULT '{LEGACY_KEY}'")
            self._db.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'ingest'")
        else:
            self._db.execute(_JOBS)
        self._db.execute(_JOBS_INDEX)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # part of the transaction

    def _transaction(self, work: Callable[[], object]) -> None:
        """`work()` in one write transaction (BEGIN IMMEDIATE: the write lock is taken first)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            work()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # files
    def lookup(self, collection: str, path: str) -> FileRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE collection = ? AND path = ?", (collection, path)
            ).fetchone()
        return None if row is None else _file_from_row(row)

    def resume_check(
        self, collection: str, path: str, *, size: int, mtime_ns: int, resume: bool, run_id: str
    ) -> tuple[FileRecord | None, bool]:
        """(usable earlier record, skip) for a file about to be ingested into `collection`. A file recorded done
        or no_face there with the same size and mtime is skipped without being read. Records of other runs count
        only when resuming; those of this very run always do (a --no-resume job interrupted by a restart does
        not start over)."""
        record = self.lookup(collection, path)
        if record is None or record.status is FileStatus.FAILED or not (resume or record.run_id == run_id):
            return None, False
        return record, record.size == size and record.mtime_ns == mtime_ns

    def record_files(self, collection: str, records: Sequence[FileRecord]) -> None:
        """One transaction for the whole batch."""
        if not records:
            return
        now = time.time()
        rows = [
            (collection, r.path, r.size, r.mtime_ns, r.content_hash, r.status.value, r.reason, r.faces, r.run_id, now)
            for r in records
        ]
        with self._lock:
            self._transaction(
                lambda: self._db.executemany(
                    f"INSERT INTO files (collection, {_FILE_COLUMNS}, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(collection, path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                    "content_hash=excluded.content_hash, status=excluded.status, reason=excluded.reason, "
                    "faces=excluded.faces, run_id=excluded.run_id, updated_at=excluded.updated_at",
                    rows,
                )
            )

    def file_counts(self, collection: str | None = None) -> dict[str, int]:
        """Files per status, of one collection key (of all of them when None)."""
        where, args = _where_collection(collection)
        with self._lock:
            rows = self._db.execute(f"SELECT status, COUNT(*) FROM files {where} GROUP BY status", args).fetchall()
        return {str(status): int(n) for status, n in rows}

    def job_counts(self, collection: str | None = None) -> dict[str, int]:
        """Jobs per status, of one collection key (of all of them when None)."""
        where, args = _where_collection(collection)
        with self._lock:
            rows = self._db.execute(f"SELECT status, COUNT(*) FROM jobs {where} GROUP BY status", args).fetchall()
        return {str(status): int(n) for status, n in rows}

    def files(self, collection: str | None = None) -> list[FileRecord]:
        """Every record of one collection key, of all of them when None (tests and tools; not for millions of
        files)."""
        where, args = _where_collection(collection)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files {where} ORDER BY path, collection", args
            ).fetchall()
        return [_file_from_row(r) for r in rows]

    # jobs
    def create_job(
        self, job_id: str, path: str, options: IngestOptions, *, collection: str, kind: JobKind = JobKind.INGEST
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, path, options, status, created_at, collection, kind) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    path,
                    json.dumps(options.to_dict()),
                    JobStatus.PENDING.value,
                    time.time(),
                    collection,
                    kind.value,
                ),
            )

    def update_job(self, job_id: str, **fields: Any) -> None:
        allowed = {"status", "started_at", "finished_at", "progress", "message", "attempts"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"cannot update job fields {sorted(set(fields) - allowed)}")
        values = [
            v.value if isinstance(v, StrEnum) else json.dumps(v.to_dict()) if isinstance(v, Progress) else v
            for v in fields.values()
        ]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))

    def job(self, job_id: str) -> JobView | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def jobs(
        self,
        *,
        limit: int = 50,
        statuses: Sequence[JobStatus] | None = None,
        oldest_first: bool = False,
        collection: str | None = None,
        kind: JobKind | None = None,
    ) -> list[JobView]:
        """Jobs newest first (or oldest), of one collection key (of all of them when None), of one kind (any when
        None)."""
        where, args = _where_collection(collection)
        if kind is not None:
            where = f"{where} {'AND' if where else 'WHERE'} kind = ?"
            args = [*args, kind.value]
        if statuses:
            where = f"{where} {'AND' if where else 'WHERE'} status IN ({', '.join('?' * len(statuses))})"
            args = [*args, *(s.value for s in statuses)]
        order = "ASC" if oldest_first else "DESC"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY created_at {order} LIMIT ?", (*args, limit)
            ).fetchall()
        return [_job_from_row(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _where_collection(collection: str | None) -> tuple[str, list[Any]]:
    return ("", []) if collection is None else ("WHERE collection = ?", [collection])


def _file_from_row(row: Sequence[Any]) -> FileRecord:
    return FileRecord(
        path=row[0],
        size=row[1],
        mtime_ns=row[2],
        content_hash=row[3],
        status=FileStatus(row[4]),
        reason=row[5],
        faces=row[6],
        run_id=row[7],
    )


def _job_from_row(row: Sequence[Any]) -> JobView:
    return JobView(
        id=row[0],
        path=row[1],
        options=IngestOptions.from_dict(json.loads(row[2])),
        status=JobStatus(row[3]),
        created_at=row[4],
        started_at=row[5],
        finished_at=row[6],
        progress=Progress.from_dict(json.loads(row[7] or "{}")),
        message=row[8],
        attempts=row[9],
        collection=row[10],
        kind=JobKind(row[11]),
    )
