"""IngestJob: one run over a folder (or one file).

    walk (lazy, one folder entry at a time)  -- resume check against the state (size, mtime)
      -> read + sha256 + decode in a thread pool (--workers), bounded queue: decode runs ahead of inference
      -> FaceEngine.analyze_batch over INFER_BATCH images (the batch entry point; it takes the inference gate)
      -> thumbnails + points (FaceService.prepare_points), accumulated across images (CommitBuffer)
      -> every --batch points: upsert (FaceService.write_points, retried), store.flush(), then the files are
         marked done in SQLite. A file is never marked done before its points are in the store.

Crash safety: point ids are uuid5(content sha256, face index), so redoing a file after a kill writes the same
points again. Progress is recorded per file and collection key (path, size, mtime, sha256, status, faces); a
restart skips files recorded done/no_face for this collection and pack whose size and mtime are unchanged, and
re-reads the others (same hash: only the record is refreshed; another hash: re-ingested, old faces removed).

Qdrant Edge durability: an update is in its WAL once `update()` returns and survives a SIGKILL (checked by
bench/crash_ingest.py). We flush anyway before marking files done (~50 ms per --batch of points). Index builds
(EdgeShard.optimize, which holds the GIL) run on the store's thread past INDEX_THRESHOLD, and once at the end.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from app.config import Settings
from app.engine import CallSource, resolve_pack
from app.errors import EngineBusy, OceanoError, StoreUnavailable
from app.faces import Face
from app.imaging import DecodedImage
from app.ingest.commit import CommitBuffer, Entry, EntryKind, write_with_retry
from app.ingest.loaded import LoadedFile, inferred_entries, load_file, unread_entry
from app.ingest.model import (
    LAST_ERRORS,
    TOP_REASONS,
    Counts,
    FileRecord,
    IngestOptions,
    Progress,
    RetryPolicy,
    RunOutcome,
)
from app.ingest.state import IngestState, collection_key
from app.ingest.walk import Roots, iter_image_files
from app.service import FaceService, ImageToIndex
from app.store import Origin

logger = logging.getLogger(__name__)

INFER_BATCH = 16  # images per FaceEngine.analyze_batch call
# Jobs inside a CPU-only service: the inference gate is held for a whole call and requests wait behind it, so
# calls are kept shorter there (on 2 cores 16 images are ~0.6 s of work; 16 vs 8 gained only ~3% throughput).
INFER_BATCH_SHARED_CPU = 8
# On a GPU, inference threads beyond those the inference gate lets run at once: each thread also cuts its images'
# thumbnails, builds their points and commits them, CPU work the GPU waited for while one thread did it all
# (`python -m app.ingest` on the H200: 200 images/s). The extra threads prepare and commit while one holds the gate.
GPU_EXTRA_INFER_WORKERS = 2


class IngestJob:
    """One run over a folder (or one file). `run()` blocks; `cancel()` and `stop()` may be called from any
    thread and take effect at the next batch boundary, after what was inferred so far has been committed."""

    def __init__(
        self,
        *,
        root: Path,
        options: IngestOptions,
        service: FaceService | None,
        state: IngestState,
        settings: Settings,
        run_id: str | None = None,
        retry: RetryPolicy | None = None,
        on_commit: Callable[[IngestJob], None] | None = None,
        infer_batch: int | None = None,
        infer_workers: int | None = None,
        collection: str | None = None,
        within: Roots = (),
    ) -> None:
        """`infer_workers`: threads running the inference loop (default: the inference gate's concurrency; on a CPU,
        with one ONNX Runtime thread each, that is what keeps every core busy; on a GPU GPU_EXTRA_INFER_WORKERS more).
        `collection`: the key of its records in the state (default: from the settings and the engine's pack,
        resolved without loading models for a dry run). `within`: INGEST_ROOTS, for the service's jobs."""
        if service is None and not options.dry_run:
            raise ValueError("an ingest run needs the FaceService unless it is a dry run")
        self.root, self.within = root, within
        self.options = options
        self.service = service
        self.state = state
        self.settings = settings
        self.collection = collection or collection_key(
            settings, service.engine.fingerprint if service is not None else resolve_pack(settings).fingerprint
        )
        self.run_id = run_id or uuid.uuid4().hex
        self.retry = retry or RetryPolicy()
        self.on_commit = on_commit
        self.infer_batch = infer_batch or INFER_BATCH
        self.infer_workers = infer_workers or _default_infer_workers(service)
        # Decoded images waiting for inference (bounds memory: each is at most a few tens of MB).
        self.queue_size = max(2 * self.infer_batch * self.infer_workers, min(options.workers, 4 * self.infer_batch))
        self.outcome: RunOutcome | None = None
        self._cancel = threading.Event()  # DELETE /api/jobs/{id}
        self._stop = threading.Event()  # cancel, service shutdown, Ctrl-C: finish the batch, commit, return
        self._halt = threading.Event()  # every loop of the run: set by _stop, by an error, and when the run ends
        self._error: BaseException | None = None  # the first error of an inference worker
        self._lock = threading.Lock()  # counts and errors
        self._counts = Counts()
        self._reasons: Counter[str] = Counter()
        self._errors: deque[dict[str, str]] = deque(maxlen=LAST_ERRORS)
        self._started: float | None = None
        self._finished: float | None = None
        self._buffer = CommitBuffer(batch=options.batch, write=self._write, written=self._written)
        self._skip_dirs = [
            p
            for p in (settings.state_dir.resolve(), settings.thumbs_dir.resolve(), settings.qdrant_path.resolve())
            if p.is_relative_to(root)
        ]

    # ------------------------------------------------------------------ control
    def cancel(self) -> None:
        self._cancel.set()
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._halt.set()

    def progress(self) -> Progress:
        with self._buffer.lock, self._lock:
            counts = Counts(**{k: getattr(self._counts, k) for k in Counts.__dataclass_fields__})
            waiting = self._buffer.waiting()
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
        return Progress(
            counts=counts,
            elapsed=elapsed,
            files_per_s=work_rate,
            faces_per_s=(counts.faces_added + faces_pending) / elapsed,
            eta_s=eta,
            last_errors=errors,
            top_reasons=reasons,
        )

    # ------------------------------------------------------------------ run
    def run(self) -> RunOutcome:
        """Blocks until the folder is done, or the run is stopped or cancelled. Raises StoreUnavailable when
        the store stays down past the retry policy; everything committed before is kept."""
        self._started = time.monotonic()
        logger.info(
            "ingest %s: %s (batch %d points, %d decode workers, %d inference workers x %d images, resume %s%s)",
            self.run_id[:8],
            self.root,
            self.options.batch,
            self.options.workers,
            self.infer_workers,
            self.infer_batch,
            "on" if self.options.resume else "off",
            ", dry run" if self.options.dry_run else "",
        )
        threading.Thread(target=self._count_total, name="ingest-count", daemon=True).start()
        try:
            if self.options.dry_run:
                self._dry_run()
            else:
                self._pipeline()
        finally:
            self._halt.set()
            dropped = self._buffer.clear()  # what a failure left uncommitted is not done: the next run redoes it
            if self.service is not None:
                self.service.abandon([e.result for e in dropped if e.result is not None])
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
        return iter_image_files(
            self.root,
            exclude=self.options.exclude,
            follow_symlinks=self.options.follow_symlinks,
            skip_dirs=self._skip_dirs,
            stop=self._halt,
            within=self.within,
        )

    def _count_total(self) -> None:
        """A second, cheap walk (names only) so that the progress has a total and an ETA early on."""
        n = sum(1 for _ in self._walk())
        if not self._halt.is_set():
            with self._lock:
                self._counts.total = n

    def _check(self, path: Path) -> tuple[os.stat_result | None, FileRecord | None, bool]:
        """(stat, usable earlier record, skip): see IngestState.resume_check."""
        try:
            st = path.stat()
        except OSError:
            return None, None, False
        return st, *self.state.resume_check(
            self.collection,
            str(path),
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            resume=self.options.resume,
            run_id=self.run_id,
        )

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
        futures: queue.Queue[Future[LoadedFile] | None] = queue.Queue(maxsize=self.queue_size)
        pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="ingest-decode")
        feeder = threading.Thread(target=self._feed, args=(pool, futures), name="ingest-feed", daemon=True)
        others = [
            threading.Thread(target=self._infer_loop, args=(futures,), name=f"ingest-infer-{i}", daemon=True)
            for i in range(1, self.infer_workers)
        ]
        feeder.start()
        for thread in others:
            thread.start()
        try:
            self._infer_loop(futures)
            for thread in others:
                thread.join()
            if self._error is not None:
                raise self._error
            self._commit(self._buffer.take(force=True))  # also when stopping: what was inferred is kept
        finally:
            self._halt.set()
            _drain(futures)
            pool.shutdown(wait=True, cancel_futures=True)
            feeder.join(timeout=10)
            for thread in others:
                thread.join(timeout=60)
        if not self._stop.is_set():
            self._build_index()

    def _infer_loop(self, futures: queue.Queue[Future[LoadedFile] | None]) -> None:
        """One inference worker: decoded images -> engine batches -> pending points -> upserts when due."""
        batch: list[LoadedFile] = []
        try:
            while not self._halt.is_set():
                try:
                    future = futures.get(timeout=0.25)
                except queue.Empty:
                    if batch:  # the walk or decode is behind: do not keep decoded images waiting
                        self._infer(batch)
                        batch = []
                    self._commit_due()
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
                self._commit_due()
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
            logger.warning(
                "ingest %s: building the index at the end failed (%s); the service builds it at its next start",
                self.run_id[:8],
                exc,
            )

    def _feed(self, pool: ThreadPoolExecutor, futures: queue.Queue[Future[LoadedFile] | None]) -> None:
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

    def _put(self, futures: queue.Queue[Future[LoadedFile] | None], item: Future[LoadedFile] | None) -> bool:
        while not self._halt.is_set():
            try:
                futures.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def _load(self, path: Path, st: os.stat_result | None, previous: FileRecord | None) -> LoadedFile:
        """Decode worker: read once, hash, decode (reduced-size JPEG decoding for big photos)."""
        follow = self.options.follow_symlinks or path == self.root  # the walk yields symbolic links only then
        return load_file(path, st, previous, settings=self.settings, follow_symlinks=follow, halt=self._halt)

    def _record_unread(self, loaded: LoadedFile) -> None:
        """A file that needs no inference: failed, or unchanged content under a new mtime."""
        entry = unread_entry(loaded, self.run_id)
        if entry is not None:
            self._buffer.add(entry)

    def _analyze(self, images: list[DecodedImage]) -> list[list[Face]] | None:
        """Faces per image through the engine's batch entry point; None when stopped while the inference gate
        was busy (requests of the service go first: the gate's timeout is short and the job waits again)."""
        assert self.service is not None
        engine = self.service.engine
        while True:
            try:
                return engine.analyze_batch(images, timeout=engine.gate.timeout, source=CallSource.INGEST)
            except EngineBusy:
                if self._halt.is_set():
                    return None

    def _infer(self, batch: list[LoadedFile]) -> None:
        assert self.service is not None
        try:
            faces = self._analyze([item.image for item in batch if item.image is not None])
        except Exception as exc:  # one image the models choke on must not fail its neighbours
            if len(batch) == 1:
                batch[0].error = f"face analysis failed: {type(exc).__name__}: {exc}"
                self._record_unread(batch[0])
                return
            logger.warning(
                "ingest %s: an engine batch failed (%s); retrying its images one by one", self.run_id[:8], exc
            )
            for item in batch:
                self._infer([item])
            return
        if faces is None:
            return  # stopped: these files stay unrecorded and are redone next time
        items = [
            ImageToIndex(
                image=item.image,
                content_hash=item.content_hash or "",
                file=item.path,
                origin=Origin.INGEST,
                replace=True,
            )
            for item in batch
            if item.image is not None
        ]
        points, results = self.service.prepare_points(items, faces)  # thumbnails written here
        entries = inferred_entries(batch, faces, results, points, self.run_id)
        self._buffer.add(*entries)

    def _commit_due(self) -> None:
        if self._buffer.commit_due() and self.on_commit is not None:
            self.on_commit(self)

    def _commit(self, entries: list[Entry]) -> None:
        """Their points into the store (retried) and flushed; only then are the files marked in the state."""
        if self._buffer.commit(entries) and self.on_commit is not None:
            self.on_commit(self)

    def _write(self, entries: list[Entry]) -> None:
        service = self.service
        assert service is not None
        writes = [e for e in entries if e.result is not None]
        if writes:

            def write() -> None:
                service.write_points([p for e in writes for p in e.points], [e.result for e in writes if e.result])
                service.store.flush()

            try:
                write_with_retry(write, policy=self.retry, stop=self._stop, what="upsert", run=self.run_id[:8])
            except Exception as exc:
                detail = exc.message if isinstance(exc, OceanoError) else f"{type(exc).__name__}: {exc}"
                raise StoreUnavailable(
                    f"the vector store failed during upsert and stayed down: {detail}. The {self._counts.done} "
                    f"files ingested before are kept; run the same ingest again to resume"
                ) from exc
        self.state.record_files(self.collection, [e.record for e in entries])

    def _written(self, entries: list[Entry]) -> None:
        """Count committed entries (the buffer calls this holding its lock)."""
        with self._lock:
            self._count(entries)

    def _count(self, entries: list[Entry]) -> None:
        counts = self._counts
        for entry in entries:
            if entry.kind is EntryKind.INGESTED:
                counts.ingested += 1
                counts.faces_added += len(entry.points)
                if entry.result is not None:
                    counts.faces_flagged += entry.result.flagged
                    counts.faces_refused += len(entry.result.refused)
            elif entry.kind is EntryKind.NO_FACE:
                counts.no_face += 1
            elif entry.kind is EntryKind.SKIPPED:
                counts.skipped += 1
            else:
                reason = entry.record.reason or "unknown error"
                counts.failed += 1
                self._reasons[reason] += 1
                self._errors.append({"path": entry.record.path, "reason": reason})


def _default_infer_workers(service: FaceService | None) -> int:
    if service is None:  # a dry run: no inference
        return 1
    engine = service.engine
    return engine.gate.concurrency + (GPU_EXTRA_INFER_WORKERS if engine.on_gpu else 0)


def _drain(futures: queue.Queue[Future[LoadedFile] | None]) -> None:
    while True:
        try:
            future = futures.get_nowait()
        except queue.Empty:
            return
        if future is not None:
            future.cancel()
