"""JobManager: background jobs inside the service, one at a time, sharing its engine and store: ingest jobs, and
jobs of other kinds whose runner the wiring hands in (JobKind.CLUSTER: app.people's clustering, which this layer
cannot import). Jobs left unfinished by a stop are resumed at the next start (those of the collection and model
pack it serves)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from app.config import Settings
from app.errors import AccessDenied, InvalidRequest, NotFound, OceanoError, ShuttingDown
from app.imaging import IMAGE_EXTENSIONS
from app.ingest.model import IngestOptions, JobKind, JobStatus, JobView, Progress, RetryPolicy, RunOutcome
from app.ingest.pipeline import INFER_BATCH_SHARED_CPU, IngestJob
from app.ingest.report import progress_line, summary_line
from app.ingest.state import LEGACY_KEY, IngestState, collection_key
from app.ingest.walk import Roots, inside
from app.service import FaceService

logger = logging.getLogger(__name__)


class BackgroundJob(Protocol):
    """One run of a job, as the manager drives it (IngestJob, or a runner of another kind)."""

    run_id: str

    def run(self) -> RunOutcome: ...

    def progress(self) -> Progress: ...

    def cancel(self) -> None: ...

    def stop(self) -> None: ...


# A job of another kind, built for a job id; it calls `report(job)` now and then (its progress is saved then).
JobRunner = Callable[[str, Callable[[BackgroundJob], None]], BackgroundJob]


class IngestJobs(Protocol):
    """What entry points may do with ingest jobs: the JobManager itself, or (WORKERS > 1) its client in an
    HTTP worker (app.core)."""

    def submit(self, path: str, options: IngestOptions) -> JobView: ...

    def get(self, job_id: str) -> JobView: ...

    def list(self, limit: int = 50) -> list[JobView]: ...

    def cancel(self, job_id: str, *, wait: float = 30.0) -> JobView: ...

    def job_counts(self) -> dict[str, int]: ...

    def file_counts(self) -> dict[str, int]: ...


class JobManager:
    """Background ingest jobs inside the service: one at a time, in a thread of the service process, sharing
    its FaceEngine (and so its inference gate) and its store. Jobs are rows in the state, each under the
    collection key it was submitted for; one of this service's key left pending or processing when the service
    stopped is resumed by `start()`. Those of other keys (another COLLECTION_NAME, backend or model pack) are
    left as they are, for a service that writes to their collection."""

    def __init__(
        self,
        *,
        service: FaceService,
        state: IngestState,
        settings: Settings,
        retry: RetryPolicy | None = None,
        persist_every: float = 1.0,
        runners: Mapping[JobKind, JobRunner] | None = None,
    ) -> None:
        self.service = service
        self.state = state
        self.settings = settings
        self.collection = collection_key(settings, service.fingerprint)
        self.retry = retry
        self.persist_every = persist_every
        self._cv = threading.Condition()
        self._queue: deque[str] = deque()
        self.runners: dict[JobKind, JobRunner] = dict(runners or {})
        self._active: BackgroundJob | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._last_persist = 0.0
        self._last_log = 0.0

    def start(self) -> None:
        unfinished = self.state.jobs(
            statuses=[JobStatus.PENDING, JobStatus.PROCESSING], oldest_first=True, limit=1_000_000
        )
        with self._cv:
            for job in unfinished:
                if job.collection != self.collection:
                    _log_not_resumed(job)
                    continue
                if job.kind is not JobKind.INGEST and job.kind not in self.runners:
                    logger.warning("%s job %s was not finished, but this service cannot run it", job.kind, job.id)
                    continue
                self.state.update_job(job.id, status=JobStatus.PENDING)
                self._queue.append(job.id)
                logger.info("%s job %s (%s) was not finished: resuming it", job.kind, job.id, job.path)
        self._thread = threading.Thread(target=self._worker, name="ingest-jobs", daemon=True)
        self._thread.start()

    @property
    def roots(self) -> Roots:
        return tuple(self.settings.ingest_root_paths)

    def resolve(self, path: str) -> Path:
        """The real path a client's path names: absolute, or relative to a root (the first that has it). Refused
        (403) unless INGEST_ROOTS is set and the path, links resolved, lies in one of them; checked before
        anything about the path itself is said, so nothing outside the roots can be probed."""
        if "\x00" in path:  # no filesystem name holds one (os.path.realpath would raise, a 500)
            raise InvalidRequest("the path contains a NUL character (\\0): no file or folder is named that way")
        roots = self.roots
        if not roots:
            raise AccessDenied(
                "ingest over HTTP is off: set INGEST_ROOTS to the folders the service may read "
                "(e.g. INGEST_ROOTS=/data/images) and restart it"
            )
        given = Path(path)
        candidates = [given] if given.is_absolute() else [r / given for r in roots]
        real = [Path(os.path.realpath(c)) for c in candidates]
        allowed = [r for r in real if inside(r, roots)]
        if not allowed:
            raise AccessDenied(f"{path} lies outside the folders this service may ingest from (INGEST_ROOTS)")
        try:
            found = next((r for r in allowed if r.exists()), None)
            if found is None:
                raise InvalidRequest(
                    f"{path} does not exist on the service's filesystem (inside its container, if it runs in one)"
                )
            if found.is_file():
                if found.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise InvalidRequest(f"{path} is not an image file ({' '.join(sorted(IMAGE_EXTENSIONS))})")
            elif not found.is_dir():
                raise InvalidRequest(f"{path} is neither a folder nor a file")
        except OSError as exc:  # e.g. a name too long for the filesystem (found by Schemathesis: it was a 500)
            raise InvalidRequest(f"cannot use that path: {exc.strerror}") from exc
        return found

    def shown(self, view: JobView) -> JobView:
        """A job as answers show it: its path and its failed files' paths relative to their INGEST_ROOTS root."""

        def relative(path: str) -> str:
            for root in self.roots:
                if Path(path).is_relative_to(root):
                    return Path(path).relative_to(root).as_posix()
            return Path(path).name

        if view.kind is not JobKind.INGEST:
            return view
        errors = [{**e, "path": relative(e["path"])} for e in view.progress.last_errors]
        return replace(view, path=relative(view.path), progress=replace(view.progress, last_errors=errors))

    def submit(self, path: str, options: IngestOptions) -> JobView:
        path = str(self.resolve(path))
        with self._cv:
            if self._closing:
                raise ShuttingDown("the service is shutting down; submit the job again once it is back")
            for job in self.state.jobs(
                statuses=[JobStatus.PENDING, JobStatus.PROCESSING], limit=1_000_000, collection=self.collection
            ):
                if job.path == path and job.options == options:
                    return self.get(job.id)  # the same work is already queued or running
            job_id = uuid.uuid4().hex
            self.state.create_job(job_id, path, options, collection=self.collection)
            self._queue.append(job_id)
            self._cv.notify_all()
        logger.info("ingest job %s queued: %s", job_id, path)
        return self.get(job_id)

    def submit_job(self, kind: JobKind) -> JobView:
        """Queue a job of another kind (one that reads no path), or answer the one of that kind already pending or
        running (resuming it if a stop left it pending)."""
        if kind not in self.runners:
            raise InvalidRequest(f"this service runs no {kind} jobs")
        with self._cv:
            if self._closing:
                raise ShuttingDown("the service is shutting down; submit the job again once it is back")
            for job in self.state.jobs(
                statuses=[JobStatus.PENDING, JobStatus.PROCESSING], limit=1, collection=self.collection, kind=kind
            ):
                return self.get(job.id)
            job_id = uuid.uuid4().hex
            self.state.create_job(job_id, "", IngestOptions(), collection=self.collection, kind=kind)
            self._queue.append(job_id)
            self._cv.notify_all()
        logger.info("%s job %s queued", kind, job_id)
        return self.get(job_id)

    def latest(self, kind: JobKind) -> JobView | None:
        """The newest job of this kind for this collection (None: there never was one)."""
        found = self.state.jobs(limit=1, collection=self.collection, kind=kind)
        return self.get(found[0].id) if found else None

    def get(self, job_id: str) -> JobView:
        """A job as answers show it (paths relative to their root)."""
        view = self.state.job(job_id)
        if view is None:
            raise NotFound(f"no job {job_id!r}")
        active = self._active
        if active is not None and active.run_id == job_id and not view.status.finished:
            view.progress = active.progress()
        return self.shown(view)

    def list(self, limit: int = 50) -> list[JobView]:
        return [
            self.get(job.id) if not job.status.finished else self.shown(job) for job in self.state.jobs(limit=limit)
        ]

    def job_counts(self) -> dict[str, int]:
        """Jobs of this collection by status."""
        return self.state.job_counts(self.collection)

    def file_counts(self) -> dict[str, int]:
        """Files recorded by ingest for this collection by status."""
        return self.state.file_counts(self.collection)

    def cancel(self, job_id: str, *, wait: float = 30.0) -> JobView:
        """Stop a job for good: a queued one at once, the running one after its current batch is committed."""
        view = self.get(job_id)
        if view.status.finished:
            return view
        with self._cv:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.state.update_job(
                    job_id, status=JobStatus.CANCELLED, finished_at=time.time(), message="cancelled before it started"
                )
                return self.get(job_id)
            active = self._active
            if active is not None and active.run_id == job_id:
                active.cancel()
                self._cv.wait_for(lambda: self._active is None or self._active.run_id != job_id, timeout=wait)
            elif view.collection != self.collection:  # left unfinished for another collection: never run here
                self.state.update_job(
                    job_id, status=JobStatus.CANCELLED, finished_at=time.time(), message="cancelled before it started"
                )
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
                    job = self._build(view)
                    self._active = job
                except Exception:
                    logger.exception("job %s could not be started", job_id)
                    continue
            try:
                self._run_job(job, view)
            except Exception:  # the state itself failing: log it and keep serving the other jobs
                logger.exception("job %s could not be run", job_id)
            finally:
                with self._cv:
                    self._active = None
                    self._cv.notify_all()

    def _build(self, view: JobView) -> BackgroundJob:
        if view.kind is not JobKind.INGEST:
            return self.runners[view.kind](view.id, self._persist)
        # Requests share the engine: leave them one inference slot when there are several, and keep engine calls
        # short on a CPU.
        engine = self.service.engine
        return IngestJob(
            root=Path(view.path),
            options=view.options,
            service=self.service,
            state=self.state,
            settings=self.settings,
            run_id=view.id,
            retry=self.retry,
            collection=self.collection,
            within=self.roots,
            on_commit=self._persist,
            infer_workers=max(1, engine.gate.concurrency - 1),
            infer_batch=None if engine.on_gpu else INFER_BATCH_SHARED_CPU,
        )

    def _run_job(self, job: BackgroundJob, view: JobView) -> None:
        job_id = job.run_id
        self.state.update_job(
            job_id, status=JobStatus.PROCESSING, started_at=time.time(), attempts=view.attempts + 1, message=None
        )
        status, message = self._run(job, view.kind)
        self.state.update_job(
            job_id,
            status=status,
            progress=job.progress(),
            message=message,
            finished_at=time.time() if status.finished else None,
        )
        logger.info("%s job %s %s: %s", view.kind, job_id, status.value, message)

    def _run(self, job: BackgroundJob, kind: JobKind) -> tuple[JobStatus, str]:
        resumable = (JobStatus.PENDING, "interrupted by a service shutdown; it resumes when the service starts")
        if isinstance(job, IngestJob):
            if not (job.within and inside(job.root, job.within)):
                return JobStatus.FAILED, "its path is not inside INGEST_ROOTS (any more): submit it again"
            if not job.root.exists():
                return JobStatus.FAILED, "its path no longer exists"
        try:
            outcome = job.run()
        except Exception as exc:
            if self._closing:
                return resumable
            if not isinstance(exc, OceanoError):
                logger.exception("%s job %s failed", kind, job.run_id)
            return JobStatus.FAILED, exc.message if isinstance(exc, OceanoError) else f"{type(exc).__name__}: {exc}"
        if outcome is RunOutcome.CANCELLED:
            done = "the files done before are kept" if kind is JobKind.INGEST else "the faces clustered are kept"
            return JobStatus.CANCELLED, f"cancelled; {done}"
        if outcome is RunOutcome.STOPPED:
            return resumable
        progress = job.progress()
        if kind is JobKind.INGEST:
            return JobStatus.COMPLETED, summary_line(progress)
        return JobStatus.COMPLETED, ", ".join(f"{key} {value}" for key, value in progress.detail.items()) or "done"

    def _persist(self, job: BackgroundJob) -> None:
        now = time.monotonic()
        if now - self._last_persist >= self.persist_every:
            self._last_persist = now
            self.state.update_job(job.run_id, progress=job.progress())
        if now - self._last_log >= 30.0:
            self._last_log = now
            progress = job.progress()
            line = progress_line(progress) if isinstance(job, IngestJob) else str(progress.detail)
            logger.info("job %s: %s", job.run_id, line)


def _log_not_resumed(job: JobView) -> None:
    if job.collection == LEGACY_KEY:
        logger.warning(
            "ingest job %s (%s) was left unfinished by an older Oceano, for a collection it did not "
            "record: not resumed; submit it again if it is still wanted",
            job.id,
            job.path,
        )
    else:
        logger.info(
            "ingest job %s (%s) is unfinished for another collection or model pack (%s): left as it is; "
            "it resumes when the service runs with that collection",
            job.id,
            job.path,
            job.collection,
        )
