"""Bulk ingest: the pipeline (IngestJob), background jobs inside the service (JobManager), and the resumable
state both keep in SQLite under STATE_DIR (IngestState).

Pipeline of one job::

    walk (lazy, one folder entry at a time)  -- resume check against the state (size, mtime)
      -> read + sha256 + decode in a thread pool (--workers), bounded queue: decode runs ahead of inference
      -> FaceEngine.analyze_batch over INFER_BATCH images (the batch entry point; it takes the inference gate)
      -> thumbnails + points (FaceService.prepare_points), accumulated across images
      -> every --batch points: upsert (FaceService.write_points, retried), store.flush(), then the files are
         marked done in SQLite. A file is never marked done before its points are in the store.

Crash safety: point ids are uuid5(content sha256, face index), so redoing a file after a kill writes the same
points again. Progress is recorded per file (path, size, mtime, sha256, status, faces); a restart skips files
recorded done/no_face whose size and mtime are unchanged, and re-reads the others (same hash: only the record
is refreshed; another hash: re-ingested, the file's old faces removed).

Qdrant Edge durability: with its WAL on (the default, and how EdgeStore creates shards) an update is in the WAL
once `update()` returns and survives a SIGKILL without `flush()` (bench/crash_ingest.py checks this). We flush
anyway before marking files done: it costs ~50 ms per --batch of points and makes the segments themselves,
not only the WAL, hold what the state calls done.

Index builds: `EdgeShard.optimize()` holds the GIL for its whole duration (~10 s per 20k points on 2 cores),
which freezes every thread of the process - in the service, request handling too. EdgeStore already runs it
from `upsert` whenever INDEX_THRESHOLD unindexed points have piled up, and a job calls `store.optimize()` once
at its end so the collection is fully indexed (status green) when the job reports completed. That final build
covers fewer than INDEX_THRESHOLD points, so its pause is bounded by the one every INDEX_THRESHOLD points
costs anyway; searches keep working during an ingest (unindexed points are scanned exactly). We accept these
pauses: moving the build out of the process would need a second process owning the shard, which is exactly
what the embedded store cannot have. With a Qdrant server (QDRANT_URL) optimize() is a no-op.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from tenacity import (
    Retrying,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_when_event_set,
    wait_exponential,
)

from app.config import Settings
from app.engine import Face
from app.errors import EngineBusy, InvalidRequest, NotFound, OceanoError, StoreUnavailable
from app.imaging import IMAGE_EXTENSIONS, DecodedImage, decode_image, read_image_bytes
from app.service import FaceService, ImageToIndex, IndexedImage, content_hash
from app.store import FacePoint

logger = logging.getLogger(__name__)

STATE_FILE = "ingest.sqlite3"
SCHEMA_VERSION = 1
DEFAULT_BATCH = 1024  # points per upsert
DEFAULT_WORKERS = 32  # decode threads
MAX_WORKERS = 256
MAX_BATCH = 65536
INFER_BATCH = 16  # images per FaceEngine.analyze_batch call
# Jobs inside a CPU-only service: the inference gate is held for a whole call and requests wait behind it, so
# calls are kept shorter there (on 2 cores 16 images are ~0.6 s of work; 16 vs 8 gained only ~3% throughput).
INFER_BATCH_SHARED_CPU = 8
COMMIT_INTERVAL = 10.0  # seconds: commit at least this often even when --batch points have not piled up
LAST_ERRORS = 20
TOP_REASONS = 5


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class FileStatus(StrEnum):
    DONE = "done"  # its faces are in the store
    NO_FACE = "no_face"  # decoded fine, no face found
    FAILED = "failed"  # unreadable, corrupt or not an image (reason recorded); retried on the next run


class RunOutcome(StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # DELETE /api/jobs/{id}: stopped for good
    STOPPED = "stopped"  # service shutdown or Ctrl-C: resumable, nothing lost


@dataclass(frozen=True, slots=True)
class IngestOptions:
    batch: int = DEFAULT_BATCH
    workers: int = DEFAULT_WORKERS
    resume: bool = True
    dry_run: bool = False
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= MAX_BATCH:
            raise InvalidRequest(f"batch must be between 1 and {MAX_BATCH} points, got {self.batch}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise InvalidRequest(f"workers must be between 1 and {MAX_WORKERS}, got {self.workers}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["exclude"] = list(self.exclude)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngestOptions:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["exclude"] = tuple(known.get("exclude") or ())
        return cls(**known)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long store writes are retried (exponential backoff) before the run stops."""

    attempts: int = 6
    max_delay: float = 120.0
    wait_initial: float = 0.5
    wait_max: float = 15.0


@dataclass(slots=True)
class Counts:
    total: int | None = None  # files the walk will yield, once the counting walk has finished
    seen: int = 0  # files taken from the walk
    ingested: int = 0  # done, with faces
    no_face: int = 0
    skipped: int = 0  # already done (unchanged) in an earlier run
    failed: int = 0
    faces_added: int = 0
    in_progress: int = 0  # read and analysed, waiting for their upsert (not done yet: not in the store yet)

    @property
    def done(self) -> int:
        return self.ingested + self.no_face

    @property
    def handled(self) -> int:
        """Files this run is through with, or nearly (in_progress): what a progress bar shows."""
        return self.done + self.skipped + self.failed + self.in_progress

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "seen": self.seen, "done": self.done, "ingested": self.ingested,
                "no_face": self.no_face, "skipped": self.skipped, "failed": self.failed,
                "faces_added": self.faces_added, "in_progress": self.in_progress}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        return cls(**{k: data[k] for k in ("total", "seen", "ingested", "no_face", "skipped", "failed",
                                           "faces_added", "in_progress") if k in data})


@dataclass(slots=True)
class Progress:
    """A snapshot of a run: what the CLI renders and what GET /api/jobs/{id} returns."""

    counts: Counts = field(default_factory=Counts)
    elapsed: float = 0.0
    files_per_s: float = 0.0  # files analysed (done or in progress) or failed, per second of this run
    faces_per_s: float = 0.0
    eta_s: float | None = None
    last_errors: list[dict[str, str]] = field(default_factory=list)
    top_reasons: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.to_dict(), "elapsed_s": round(self.elapsed, 2),
                "files_per_s": round(self.files_per_s, 2), "faces_per_s": round(self.faces_per_s, 2),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
                "last_errors": self.last_errors, "top_reasons": self.top_reasons}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(counts=Counts.from_dict(data.get("counts", {})), elapsed=float(data.get("elapsed_s", 0.0)),
                   files_per_s=float(data.get("files_per_s", 0.0)), faces_per_s=float(data.get("faces_per_s", 0.0)),
                   eta_s=data.get("eta_s"), last_errors=list(data.get("last_errors", [])),
                   top_reasons=list(data.get("top_reasons", [])))


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    status: FileStatus
    reason: str | None = None
    faces: int = 0
    run_id: str | None = None


@dataclass(slots=True)
class JobView:
    id: str
    path: str
    status: JobStatus
    options: IngestOptions
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: Progress
    message: str | None
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "status": self.status.value, "options": self.options.to_dict(),
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                **self.progress.to_dict(), "message": self.message, "attempts": self.attempts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobView:
        return cls(id=data["id"], path=data["path"], status=JobStatus(data["status"]),
                   options=IngestOptions.from_dict(data.get("options", {})), created_at=data["created_at"],
                   started_at=data.get("started_at"), finished_at=data.get("finished_at"),
                   progress=Progress.from_dict(data), message=data.get("message"),
                   attempts=int(data.get("attempts", 0)))


# ------------------------------------------------------------------------------------------------- state


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
            raise StoreUnavailable(f"{path} was written by a newer Oceano (schema {version}); upgrade Oceano")
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


# ------------------------------------------------------------------------------------------------- walk


def iter_image_files(root: Path, *, exclude: Sequence[str] = (), follow_symlinks: bool = False,
                     skip_dirs: Sequence[Path] = (), stop: threading.Event | None = None) -> Iterator[Path]:
    """Image files under `root` (recursively; extensions case-insensitive), or `root` itself when it is a
    file. Lazy: each folder is read entry by entry (os.scandir) and files are yielded as they come, so a
    folder of millions of files is never held as a list. Only the folders still to visit are kept.

    `exclude`: glob patterns matched against the path relative to `root` and against the bare name; a
    matching folder is not descended into. Symbolic links (files and folders) are skipped unless
    `follow_symlinks`; followed folders are visited once (loops are cut by device and inode)."""
    if root.is_file():
        yield root
        return
    skip = {str(p) for p in skip_dirs}
    visited: set[tuple[int, int]] = set()
    pending: deque[Path] = deque([root])
    while pending:
        if stop is not None and stop.is_set():
            return
        folder = pending.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in visited:
                continue
            visited.add(key)
            scanner = os.scandir(folder)
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc.strerror)
            continue
        with scanner:
            for entry in scanner:
                try:
                    is_link = entry.is_symlink()
                    if is_link and not follow_symlinks:
                        continue
                    is_dir = entry.is_dir(follow_symlinks=True)
                    is_file = not is_dir and entry.is_file(follow_symlinks=True)
                except OSError:
                    continue
                if not (is_dir or is_file):
                    continue
                path = Path(entry.path)
                if exclude and _excluded(path, root, exclude):
                    continue
                if is_dir:
                    if entry.path not in skip:
                        pending.append(path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    yield path


def _excluded(path: Path, root: Path, patterns: Sequence[str]) -> bool:
    relative = path.relative_to(root).as_posix()
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(path.name, p) for p in patterns)


# ------------------------------------------------------------------------------------------------- pipeline


@dataclass(slots=True)
class _Loaded:
    """What a decode worker hands to the inference loop."""

    path: str
    size: int
    mtime_ns: int
    previous: FileRecord | None = None  # the record of an earlier run that the file may still match
    content_hash: str | None = None
    image: DecodedImage | None = None
    unchanged: bool = False  # same bytes as `previous`: only the record's size/mtime are refreshed
    error: str | None = None


class _Kind(StrEnum):
    INGESTED = "ingested"
    NO_FACE = "no_face"
    SKIPPED = "skipped"  # same content as recorded, new mtime: only the record is refreshed
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class _Entry:
    """One file's work waiting for the next upsert: its record and points; its pixels are already released."""

    record: FileRecord
    kind: _Kind
    result: IndexedImage | None = None  # None: nothing to write to the store
    points: tuple[FacePoint, ...] = ()


class IngestJob:
    """One run over a folder (or one file). `run()` blocks; `cancel()` and `stop()` may be called from any
    thread and take effect at the next batch boundary, after what was inferred so far has been committed."""

    def __init__(self, *, root: Path, options: IngestOptions, service: FaceService | None, state: IngestState,
                 settings: Settings, run_id: str | None = None, retry: RetryPolicy | None = None,
                 on_commit: Callable[[IngestJob], None] | None = None, infer_batch: int | None = None,
                 infer_workers: int | None = None) -> None:
        """`infer_workers`: threads running engine batches at the same time (default: the inference gate's
        concurrency; on a CPU, with one ONNX Runtime thread each, that is what keeps every core busy)."""
        if service is None and not options.dry_run:
            raise ValueError("an ingest run needs the FaceService unless it is a dry run")
        self.root = root
        self.options = options
        self.service = service
        self.state = state
        self.settings = settings
        self.run_id = run_id or uuid.uuid4().hex
        self.retry = retry or RetryPolicy()
        self.on_commit = on_commit
        self.infer_batch = infer_batch or INFER_BATCH
        self.infer_workers = infer_workers or (service.engine.gate.concurrency if service is not None else 1)
        # Decoded images waiting for inference (bounds memory: each is at most a few tens of MB).
        self.queue_size = max(2 * self.infer_batch * self.infer_workers, min(options.workers, 4 * self.infer_batch))
        self.outcome: RunOutcome | None = None
        self._cancel = threading.Event()  # DELETE /api/jobs/{id}
        self._stop = threading.Event()  # cancel, service shutdown, Ctrl-C: finish the batch, commit, return
        self._halt = threading.Event()  # every loop of the run: set by _stop, by an error, and when the run ends
        self._error: BaseException | None = None  # the first error of an inference worker
        self._lock = threading.Lock()  # counts and errors
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()  # one upsert at a time
        self._counts = Counts()
        self._reasons: Counter[str] = Counter()
        self._errors: deque[dict[str, str]] = deque(maxlen=LAST_ERRORS)
        self._started: float | None = None
        self._finished: float | None = None
        self._pending: list[_Entry] = []  # in order; committed in chunks of about --batch points
        self._committing: list[_Entry] = []  # taken from _pending, being written (both under _pending_lock)
        self._pending_since = time.monotonic()
        self._skip_dirs = [p for p in (settings.state_dir.resolve(), settings.thumbs_dir.resolve(),
                                       settings.qdrant_path.resolve()) if p.is_relative_to(root)]

    # ------------------------------------------------------------------ control
    def cancel(self) -> None:
        self._cancel.set()
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._halt.set()

    def progress(self) -> Progress:
        with self._pending_lock, self._lock:
            counts = Counts(**{k: getattr(self._counts, k) for k in Counts.__dataclass_fields__})
            waiting = self._pending + self._committing
            counts.in_progress = len(waiting)
            faces_pending = sum(len(e.points) for e in waiting)
            reasons = [{"reason": r, "count": n} for r, n in self._reasons.most_common(TOP_REASONS)]
            errors = list(self._errors)
        if self._started is None:
            return Progress(counts=counts, last_errors=errors, top_reasons=reasons)
        elapsed = max((self._finished or time.monotonic()) - self._started, 1e-6)
        work_rate = (counts.done + counts.failed + counts.in_progress) / elapsed
        eta = None
        if counts.total is not None and self._finished is None and work_rate > 0:
            eta = max(0, counts.total - counts.handled) / work_rate
        return Progress(counts=counts, elapsed=elapsed, files_per_s=work_rate,
                        faces_per_s=(counts.faces_added + faces_pending) / elapsed, eta_s=eta, last_errors=errors,
                        top_reasons=reasons)

    # ------------------------------------------------------------------ run
    def run(self) -> RunOutcome:
        """Blocks until the folder is done, or the run is stopped or cancelled. Raises StoreUnavailable when
        the store stays down past the retry policy; everything committed before is kept."""
        self._started = time.monotonic()
        logger.info("ingest %s: %s (batch %d points, %d decode workers, %d inference workers x %d images, "
                    "resume %s%s)", self.run_id[:8], self.root, self.options.batch, self.options.workers,
                    self.infer_workers, self.infer_batch, "on" if self.options.resume else "off",
                    ", dry run" if self.options.dry_run else "")
        threading.Thread(target=self._count_total, name="ingest-count", daemon=True).start()
        try:
            if self.options.dry_run:
                self._dry_run()
            else:
                self._pipeline()
        finally:
            self._halt.set()
            with self._pending_lock:
                self._pending.clear()  # what a failure left uncommitted is not done: the next run redoes it
                self._committing.clear()
            self._finished = time.monotonic()
        if self._cancel.is_set():
            self.outcome = RunOutcome.CANCELLED
        elif self._stop.is_set():
            self.outcome = RunOutcome.STOPPED
        else:
            self.outcome = RunOutcome.COMPLETED
            with self._lock:
                self._counts.total = self._counts.seen
        return self.outcome

    def _walk(self) -> Iterator[Path]:
        return iter_image_files(self.root, exclude=self.options.exclude, follow_symlinks=self.options.follow_symlinks,
                                skip_dirs=self._skip_dirs, stop=self._halt)

    def _count_total(self) -> None:
        """A second, cheap walk (names only) so that the progress has a total and an ETA early on."""
        n = sum(1 for _ in self._walk())
        if not self._halt.is_set():
            with self._lock:
                self._counts.total = n

    def _check(self, path: Path) -> tuple[os.stat_result | None, FileRecord | None, bool]:
        """(stat, usable earlier record, skip). A file recorded done or no_face with the same size and mtime is
        skipped without being read. Records of other runs count only when resuming; those of this very job
        always do (a --no-resume job interrupted by a restart does not start over)."""
        try:
            st = path.stat()
        except OSError:
            return None, None, False
        record = self.state.lookup(str(path))
        if record is None or record.status is FileStatus.FAILED or not (
                self.options.resume or record.run_id == self.run_id):
            return st, None, False
        return st, record, record.size == st.st_size and record.mtime_ns == st.st_mtime_ns

    def _dry_run(self) -> None:
        for path in self._walk():
            _, _, skip = self._check(path)
            with self._lock:
                self._counts.seen += 1
                if skip:
                    self._counts.skipped += 1
                else:
                    self._counts.ingested += 1  # would be read (and ingested unless unchanged)

    def _pipeline(self) -> None:
        assert self.service is not None
        futures: queue.Queue[Future[_Loaded] | None] = queue.Queue(maxsize=self.queue_size)
        pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="ingest-decode")
        feeder = threading.Thread(target=self._feed, args=(pool, futures), name="ingest-feed", daemon=True)
        others = [threading.Thread(target=self._infer_loop, args=(futures,), name=f"ingest-infer-{i}", daemon=True)
                  for i in range(1, self.infer_workers)]
        feeder.start()
        for thread in others:
            thread.start()
        try:
            self._infer_loop(futures)
            for thread in others:
                thread.join()
            if self._error is not None:
                raise self._error
            self._commit(self._take(force=True))  # also when stopping: what was inferred is kept
        finally:
            self._halt.set()
            _drain(futures)
            pool.shutdown(wait=True, cancel_futures=True)
            feeder.join(timeout=10)
            for thread in others:
                thread.join(timeout=60)
        if not self._stop.is_set():
            self._build_index()

    def _infer_loop(self, futures: queue.Queue[Future[_Loaded] | None]) -> None:
        """One inference worker: decoded images -> engine batches -> pending points -> upserts when due."""
        batch: list[_Loaded] = []
        try:
            while not self._halt.is_set():
                try:
                    future = futures.get(timeout=0.25)
                except queue.Empty:
                    if batch:  # the walk or decode is behind: do not keep decoded images waiting
                        self._infer(batch)
                        batch = []
                    self._maybe_commit()
                    continue
                if future is None:
                    futures.put_nowait(None)  # the end, for the other workers too (its slot was just freed)
                    break
                loaded = future.result()
                if loaded.image is None:
                    self._record_unread(loaded)
                else:
                    batch.append(loaded)
                    if len(batch) >= self.infer_batch:
                        self._infer(batch)
                        batch = []
                self._maybe_commit()
            if batch and not self._halt.is_set():
                self._infer(batch)
        except BaseException as exc:  # ends the whole run; _pipeline raises it (the feeder's errors too)
            with self._lock:
                self._error = self._error or exc
            self._halt.set()

    def _build_index(self) -> None:
        assert self.service is not None
        try:
            self.service.store.optimize()
        except Exception as exc:  # the points are in; an index build can be redone at any time
            logger.warning("ingest %s: building the index at the end failed (%s); the service builds it at its "
                           "next start", self.run_id[:8], exc)

    def _feed(self, pool: ThreadPoolExecutor, futures: queue.Queue[Future[_Loaded] | None]) -> None:
        try:
            for path in self._walk():
                st, record, skip = self._check(path)
                with self._lock:
                    self._counts.seen += 1
                    self._counts.skipped += skip
                if skip:
                    continue
                future = pool.submit(self._load, path, st, record)
                if not self._put(futures, future):
                    future.cancel()
                    return
        except Exception as exc:  # e.g. the state database failing: the run fails (a listing error is only logged)
            with self._lock:
                self._error = self._error or exc
            self._halt.set()
        finally:
            self._put(futures, None)

    def _put(self, futures: queue.Queue[Future[_Loaded] | None], item: Future[_Loaded] | None) -> bool:
        while not self._halt.is_set():
            try:
                futures.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def _load(self, path: Path, st: os.stat_result | None, previous: FileRecord | None) -> _Loaded:
        """Decode worker: read once, hash, decode (reduced-size JPEG decoding for big photos)."""
        loaded = _Loaded(path=str(path), size=st.st_size if st else -1, mtime_ns=st.st_mtime_ns if st else -1,
                         previous=previous)
        if self._halt.is_set():
            loaded.error = "stopped"
            return loaded
        try:
            if st is None:
                loaded.error = "cannot read: the file vanished or cannot be listed"
                return loaded
            if not stat.S_ISREG(st.st_mode):
                loaded.error = "not a regular file"
                return loaded
            data = read_image_bytes(path, max_bytes=self.settings.max_upload_bytes)
            loaded.content_hash = content_hash(data)
            if previous is not None and previous.content_hash == loaded.content_hash:
                loaded.unchanged = True
                return loaded
            loaded.image = decode_image(data, max_bytes=self.settings.max_upload_bytes,
                                        max_pixels=int(self.settings.max_megapixels * 1e6))
        except OceanoError as exc:
            loaded.error = exc.message.replace(str(path), "the file")
        except Exception as exc:  # a decoder crash on one file must not stop the run
            loaded.error = f"cannot decode: {type(exc).__name__}: {exc}"
        return loaded

    def _record_unread(self, loaded: _Loaded) -> None:
        """A file that needs no inference: failed, or unchanged content under a new mtime."""
        if loaded.error == "stopped":
            return  # not recorded: redone next time
        if loaded.unchanged and loaded.previous is not None:
            entry = _Entry(FileRecord(
                path=loaded.path, size=loaded.size, mtime_ns=loaded.mtime_ns, content_hash=loaded.content_hash,
                status=loaded.previous.status, faces=loaded.previous.faces, run_id=self.run_id), _Kind.SKIPPED)
        else:
            entry = _Entry(FileRecord(
                path=loaded.path, size=loaded.size, mtime_ns=loaded.mtime_ns, content_hash=loaded.content_hash,
                status=FileStatus.FAILED, reason=loaded.error or "unknown error", run_id=self.run_id), _Kind.FAILED)
        with self._pending_lock:
            self._pending.append(entry)

    def _analyze(self, images: list[DecodedImage]) -> list[list[Face]] | None:
        """Faces per image through the engine's batch entry point; None when stopped while the inference gate
        was busy (requests of the service go first: the gate's timeout is short and the job waits again)."""
        assert self.service is not None
        engine = self.service.engine
        while True:
            try:
                return engine.analyze_batch(images, timeout=engine.gate.timeout)
            except EngineBusy:
                if self._halt.is_set():
                    return None

    def _infer(self, batch: list[_Loaded]) -> None:
        assert self.service is not None
        try:
            faces = self._analyze([item.image for item in batch if item.image is not None])
        except Exception as exc:  # one image the models choke on must not fail its neighbours
            if len(batch) == 1:
                batch[0].error = f"face analysis failed: {type(exc).__name__}: {exc}"
                self._record_unread(batch[0])
                return
            logger.warning("ingest %s: an engine batch failed (%s); retrying its images one by one",
                           self.run_id[:8], exc)
            for item in batch:
                self._infer([item])
            return
        if faces is None:
            return  # stopped: these files stay unrecorded and are redone next time
        items = [ImageToIndex(image=item.image, content_hash=item.content_hash or "", file=item.path)
                 for item in batch if item.image is not None]
        points, results = self.service.prepare_points(items, faces)  # thumbnails written here
        by_file: dict[str, list[FacePoint]] = {}
        for point in points:
            by_file.setdefault(point.payload["file"], []).append(point)
        entries = []
        for item, row, result in zip(batch, faces, results, strict=True):
            item.image = None  # release the pixels now; only the points wait for the upsert
            record = FileRecord(path=item.path, size=item.size, mtime_ns=item.mtime_ns,
                                content_hash=item.content_hash, status=FileStatus.DONE if row else FileStatus.NO_FACE,
                                faces=len(row), run_id=self.run_id)
            entries.append(_Entry(record, _Kind.INGESTED if row else _Kind.NO_FACE, result,
                                  tuple(by_file.get(item.path, ()))))
        with self._pending_lock:
            self._pending.extend(entries)

    def _take(self, *, force: bool) -> list[_Entry]:
        """The pending files due for an upsert: the leading ones holding about --batch points (a file's points
        are never split across two upserts); all of them when `force`, when they have waited COMMIT_INTERVAL,
        or when --batch files without points have piled up."""
        with self._pending_lock:
            pending = self._pending
            cut = 0
            if force or len(pending) >= self.options.batch or (
                    pending and time.monotonic() - self._pending_since >= COMMIT_INTERVAL):
                cut = len(pending)
            else:
                points = 0
                for i, entry in enumerate(pending):
                    points += len(entry.points)
                    if points >= self.options.batch:
                        cut = i + 1
                        break
            taken = pending[:cut]
            del pending[:cut]
            if taken:
                self._pending_since = time.monotonic()
                self._committing.extend(taken)
            return taken

    def _maybe_commit(self) -> None:
        while entries := self._take(force=False):
            self._commit(entries)

    def _commit(self, entries: list[_Entry]) -> None:
        """Their points into the store (retried) and flushed; only then are the files marked in the state."""
        if not entries:
            return
        written = False
        try:
            with self._commit_lock:
                self._write(entries)
            written = True
        finally:
            # counted done (or dropped, after a failure) in the same step as they stop being in progress
            with self._pending_lock, self._lock:
                ids = {id(e) for e in entries}
                self._committing = [e for e in self._committing if id(e) not in ids]
                if written:
                    self._count(entries)
        if written and self.on_commit is not None:
            self.on_commit(self)

    def _write(self, entries: list[_Entry]) -> None:
        service = self.service
        assert service is not None
        writes = [e for e in entries if e.result is not None]
        if writes:
            def write() -> None:
                service.write_points([p for e in writes for p in e.points], [e.result for e in writes if e.result])
                service.store.flush()

            self._with_retry("upsert", write)
        self.state.record_files([e.record for e in entries])

    def _count(self, entries: list[_Entry]) -> None:
        counts = self._counts
        for entry in entries:
            if entry.kind is _Kind.INGESTED:
                counts.ingested += 1
                counts.faces_added += len(entry.points)
            elif entry.kind is _Kind.NO_FACE:
                counts.no_face += 1
            elif entry.kind is _Kind.SKIPPED:
                counts.skipped += 1
            else:
                reason = entry.record.reason or "unknown error"
                counts.failed += 1
                self._reasons[reason] += 1
                self._errors.append({"path": entry.record.path, "reason": reason})

    def _with_retry(self, what: str, fn: Callable[[], None]) -> None:
        policy = self.retry
        retrying = Retrying(
            # A stopping run does not wait for the store: its uncommitted files are simply redone next time.
            stop=stop_any(stop_after_attempt(policy.attempts), stop_after_delay(policy.max_delay),
                          stop_when_event_set(self._stop)),
            wait=wait_exponential(multiplier=policy.wait_initial, max=policy.wait_max),
            reraise=True,
            before_sleep=lambda s: logger.warning(
                "ingest %s: store %s failed (attempt %d of %d), retrying: %s", self.run_id[:8], what,
                s.attempt_number, policy.attempts, s.outcome.exception() if s.outcome else None),
        )
        try:
            retrying(fn)
        except Exception as exc:
            detail = exc.message if isinstance(exc, OceanoError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                done = self._counts.done
            raise StoreUnavailable(
                f"the vector store failed during {what} and stayed down: {detail}. The {done} files ingested "
                f"before are kept; run the same ingest again to resume"
            ) from exc


def _drain(futures: queue.Queue[Future[_Loaded] | None]) -> None:
    while True:
        try:
            future = futures.get_nowait()
        except queue.Empty:
            return
        if future is not None:
            future.cancel()


# ------------------------------------------------------------------------------------------------- manager


class JobManager:
    """Background ingest jobs inside the service: one at a time, in a thread of the service process, sharing
    its FaceEngine (and so its inference gate) and its store. Jobs are rows in the state; one left pending or
    processing when the service stopped is resumed by `start()`."""

    def __init__(self, *, service: FaceService, state: IngestState, settings: Settings,
                 retry: RetryPolicy | None = None, persist_every: float = 1.0) -> None:
        self.service = service
        self.state = state
        self.settings = settings
        self.retry = retry
        self.persist_every = persist_every
        self._cv = threading.Condition()
        self._queue: deque[str] = deque()
        self._active: IngestJob | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._last_persist = 0.0
        self._last_log = 0.0

    def start(self) -> None:
        unfinished = self.state.jobs(statuses=[JobStatus.PENDING, JobStatus.PROCESSING], oldest_first=True,
                                     limit=1_000_000)
        with self._cv:
            for job in unfinished:
                self.state.update_job(job.id, status=JobStatus.PENDING)
                self._queue.append(job.id)
                logger.info("ingest job %s (%s) was not finished: resuming it", job.id, job.path)
        self._thread = threading.Thread(target=self._worker, name="ingest-jobs", daemon=True)
        self._thread.start()

    def submit(self, path: str, options: IngestOptions) -> JobView:
        root = Path(path)
        if not root.is_absolute():
            raise InvalidRequest(f"the path must be absolute (as the service sees it), got {path!r}")
        if not root.exists():
            raise InvalidRequest(f"{path} does not exist on the service's filesystem (inside its container, "
                                 f"if it runs in one)")
        if not (root.is_dir() or root.is_file()):
            raise InvalidRequest(f"{path} is neither a folder nor a file")
        roots = self.settings.ingest_root_paths
        if roots and not any(root.resolve().is_relative_to(r) for r in roots):
            raise InvalidRequest(f"{path} is outside the folders this service may ingest from (INGEST_ROOTS: "
                                 f"{', '.join(str(r) for r in roots)})")
        with self._cv:
            if self._closing:
                raise StoreUnavailable("the service is shutting down; submit the job again once it is back")
            for job in self.state.jobs(statuses=[JobStatus.PENDING, JobStatus.PROCESSING], limit=1_000_000):
                if job.path == path and job.options == options:
                    return self.get(job.id)  # the same work is already queued or running
            job_id = uuid.uuid4().hex
            self.state.create_job(job_id, path, options)
            self._queue.append(job_id)
            self._cv.notify_all()
        logger.info("ingest job %s queued: %s", job_id, path)
        return self.get(job_id)

    def get(self, job_id: str) -> JobView:
        view = self.state.job(job_id)
        if view is None:
            raise NotFound(f"no ingest job {job_id!r}")
        active = self._active
        if active is not None and active.run_id == job_id and not view.status.finished:
            view.progress = active.progress()
        return view

    def list(self, limit: int = 50) -> list[JobView]:
        return [self.get(job.id) if not job.status.finished else job for job in self.state.jobs(limit=limit)]

    def cancel(self, job_id: str, *, wait: float = 30.0) -> JobView:
        """Stop a job for good: a queued one at once, the running one after its current batch is committed."""
        view = self.get(job_id)
        if view.status.finished:
            return view
        with self._cv:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.state.update_job(job_id, status=JobStatus.CANCELLED, finished_at=time.time(),
                                      message="cancelled before it started")
                return self.get(job_id)
            active = self._active
            if active is not None and active.run_id == job_id:
                active.cancel()
                self._cv.wait_for(lambda: self._active is None or self._active.run_id != job_id, timeout=wait)
        return self.get(job_id)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the running job at its next batch boundary (what it inferred is committed) and leave it, and the
        queued ones, to be resumed at the next start. Call before closing the store."""
        with self._cv:
            self._closing = True
            if self._active is not None:
                self._active.stop()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the ingest job did not stop within %.0fs; it resumes at the next start", timeout)

    def _worker(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closing or bool(self._queue))
                if self._closing:
                    return
                job_id = self._queue.popleft()
                try:
                    # Dequeued and made active under one lock: a cancel never finds the job in neither place.
                    view = self.state.job(job_id)
                    if view is None or view.status.finished:
                        continue
                    # Requests share the engine: leave them one inference slot when there are several, and
                    # keep engine calls short on a CPU.
                    engine = self.service.engine
                    job = IngestJob(root=Path(view.path), options=view.options, service=self.service,
                                    state=self.state, settings=self.settings, run_id=job_id, retry=self.retry,
                                    on_commit=self._persist, infer_workers=max(1, engine.gate.concurrency - 1),
                                    infer_batch=None if engine.on_gpu else INFER_BATCH_SHARED_CPU)
                    self._active = job
                except Exception:
                    logger.exception("ingest job %s could not be started", job_id)
                    continue
            try:
                self._run_job(job, view.attempts)
            except Exception:  # the state itself failing: log it and keep serving the other jobs
                logger.exception("ingest job %s could not be run", job_id)
            finally:
                with self._cv:
                    self._active = None
                    self._cv.notify_all()

    def _run_job(self, job: IngestJob, attempts: int) -> None:
        job_id = job.run_id
        self.state.update_job(job_id, status=JobStatus.PROCESSING, started_at=time.time(), attempts=attempts + 1,
                              message=None)
        status, message = self._run(job)
        self.state.update_job(job_id, status=status, progress=job.progress(), message=message,
                              finished_at=time.time() if status.finished else None)
        logger.info("ingest job %s %s: %s", job_id, status.value, message)

    def _run(self, job: IngestJob) -> tuple[JobStatus, str]:
        resumable = (JobStatus.PENDING, "interrupted by a service shutdown; it resumes when the service starts")
        if not job.root.exists():
            return JobStatus.FAILED, f"{job.root} no longer exists"
        try:
            outcome = job.run()
        except Exception as exc:
            if self._closing:
                return resumable
            if not isinstance(exc, OceanoError):
                logger.exception("ingest job %s failed", job.run_id)
            return JobStatus.FAILED, exc.message if isinstance(exc, OceanoError) else f"{type(exc).__name__}: {exc}"
        if outcome is RunOutcome.CANCELLED:
            return JobStatus.CANCELLED, "cancelled; the files done before are kept"
        if outcome is RunOutcome.STOPPED:
            return resumable
        return JobStatus.COMPLETED, summary_line(job.progress())

    def _persist(self, job: IngestJob) -> None:
        now = time.monotonic()
        if now - self._last_persist >= self.persist_every:
            self._last_persist = now
            self.state.update_job(job.run_id, progress=job.progress())
        if now - self._last_log >= 30.0:
            self._last_log = now
            logger.info("ingest job %s: %s", job.run_id, progress_line(job.progress()))


def progress_line(progress: Progress) -> str:
    c = progress.counts
    total = "?" if c.total is None else str(c.total)
    eta = "" if progress.eta_s is None else f", ETA {format_duration(progress.eta_s)}"
    return (f"{c.handled}/{total} files ({c.done} done, {c.in_progress} in progress, {c.skipped} skipped, "
            f"{c.failed} failed), {c.faces_added} faces added, {progress.files_per_s:.1f} files/s, "
            f"{progress.faces_per_s:.1f} faces/s{eta}")


def summary_line(progress: Progress) -> str:
    c = progress.counts
    return (f"{c.seen} files seen: {c.ingested} ingested, {c.skipped} skipped (already done), {c.no_face} without "
            f"faces, {c.failed} failed; {c.faces_added} faces added in {format_duration(progress.elapsed)} "
            f"({progress.files_per_s:.1f} images/s)")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
