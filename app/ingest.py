"""python -m app.ingest: bulk ingest of a folder of photos (or one photo), resumable and crash-safe.

When the Oceano service answers on this machine (GET /health on http://127.0.0.1:$PORT, or --url), the folder is
submitted to it as a background job (POST /api/ingest) and followed until it ends: the service already holds
the model session and the embedded store, so nothing is opened a second time. Ctrl-C detaches; the job goes on.
Otherwise the work runs in this process (which then opens the embedded store itself). Either way progress is
kept per file in STATE_DIR/ingest.sqlite3, so killing the command and running it again loses nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from app.engine import FaceEngine
from app.errors import InvalidRequest, OceanoError
from app.jobs import (
    DEFAULT_BATCH,
    DEFAULT_WORKERS,
    STATE_FILE,
    IngestJob,
    IngestOptions,
    IngestState,
    JobStatus,
    JobView,
    Progress,
    RunOutcome,
    format_duration,
    progress_line,
)
from app.runtime import InferenceGate, select_providers
from app.service import FaceService
from app.store import open_store
from app.thumbs import ThumbnailStore

logger = logging.getLogger("app.ingest")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PROBE_TIMEOUT = 2.0
POLL_INTERVAL = 1.0
LOG_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal
RECONNECT_FOR = 60.0  # seconds to keep trying when the service stops answering while a job is followed
MAX_CPU_INFER_WORKERS = 8

EPILOG = """\
examples:
  python -m app.ingest --path /data/images
  docker exec oceano-api python3 -m app.ingest --path /data/images --batch 100
  python -m app.ingest --path /data/images --exclude '*/.thumbnails/*' --exclude '*.gif'
  python -m app.ingest --attach 5f0c...   follow a job of the service again after Ctrl-C
  python -m app.ingest --cancel 5f0c...   cancel it (files done so far are kept)

Settings (STATE_DIR, QDRANT_PATH, QDRANT_URL, MODEL_NAME, PORT, ...) come from the environment, as for the
service. The embedded store can be open in one process only: while the service runs, the command hands the
work to it. With QDRANT_URL (a Qdrant server) --local may run beside the service.
"""


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from exc
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.ingest", allow_abbrev=False, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Index every face of a folder of photos into Oceano. Resumable: progress is kept per file "
                    "in STATE_DIR, so the command can be killed and run again without losing or duplicating "
                    "anything. Submits the work to the running service when there is one.")
    parser.add_argument("--path", "--folder", dest="path", metavar="PATH",
                        help="a folder (walked recursively; .jpg .jpeg .png .webp .bmp .tif .tiff .gif, any case) "
                             "or a single image file. --folder is an alias")
    parser.add_argument("--batch", type=_positive, default=DEFAULT_BATCH, metavar="N",
                        help="faces (points) per upsert into the vector store; files are marked done after each "
                             "upsert (default %(default)s)")
    parser.add_argument("--workers", type=_positive, default=DEFAULT_WORKERS, metavar="N",
                        help="threads reading and decoding images ahead of the face models (default %(default)s)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="reprocess every file, also those already done (idempotent: the same faces get the "
                             "same ids)")
    parser.add_argument("--dry-run", action="store_true",
                        help="only walk the folder and report how many files would be ingested and how many are "
                             "already done; loads no model, writes nothing")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out files and folders whose path relative to PATH, or whose name, matches "
                             "this glob (e.g. '*.gif', 'tmp/*', '.*'); repeatable")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="follow symbolic links to files and folders (each folder is visited once); by "
                             "default links are skipped")
    parser.add_argument("--url", metavar="URL",
                        help="URL of the running service (default http://127.0.0.1:$PORT); when given, the "
                             "service must answer")
    parser.add_argument("--local", action="store_true",
                        help="run in this process even when the service answers (for QDRANT_URL set-ups; the "
                             "embedded store refuses a second process)")
    parser.add_argument("--attach", metavar="JOB_ID", help="follow a job already submitted to the service")
    parser.add_argument("--cancel", metavar="JOB_ID", help="cancel a job of the service")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per progress poll
    url = (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    if args.attach or args.cancel:
        if not probe_service(url):
            logger.error("no Oceano service answers at %s (use --url)", url)
            return EXIT_FAILED
        with httpx.Client(base_url=url, timeout=30.0) as client:
            if args.cancel:
                return cancel_job(client, args.cancel)
            return follow_job(client, args.attach, url)
    if not args.path:
        parser.error("--path is required (a folder or an image file)")
    root = Path(args.path).expanduser().resolve()
    if not root.exists():
        logger.error("%s does not exist", root)
        return EXIT_USAGE
    try:
        options = IngestOptions(batch=args.batch, workers=args.workers, resume=args.resume, dry_run=args.dry_run,
                                exclude=tuple(args.exclude), follow_symlinks=args.follow_symlinks)
    except InvalidRequest as exc:
        parser.error(exc.message)
    if options.dry_run:
        return run_dry(root, options, settings)
    if not args.local:
        if probe_service(url):
            return submit_job(url, root, options)
        if args.url:
            logger.error("no Oceano service answers at %s; leave out --url to run in this process", url)
            return EXIT_FAILED
    return run_local(root, options, settings)


# ------------------------------------------------------------------------------------------------- service


def probe_service(url: str) -> bool:
    """True when an Oceano service answers /health (ready or not: it holds the store either way)."""
    try:
        response = httpx.get(f"{url}/health", timeout=PROBE_TIMEOUT)
    except httpx.HTTPError:
        return False
    try:
        body = response.json()
    except ValueError:
        body = None
    if not (isinstance(body, dict) and "checks" in body):
        logger.warning("%s answers, but not as an Oceano service; ignoring it", url)
        return False
    return True


def submit_job(url: str, root: Path, options: IngestOptions) -> int:
    with httpx.Client(base_url=url, timeout=30.0) as client:
        try:
            response = client.post("/api/ingest", json={"path": str(root), **options.to_dict()})
        except httpx.HTTPError as exc:
            logger.error("could not submit the job to the service at %s: %s", url, exc)
            return EXIT_FAILED
        if response.status_code != 202:
            logger.error("the service refused the job (%d): %s", response.status_code, _detail(response))
            return EXIT_FAILED
        job = JobView.from_dict(response.json())
        logger.info("the service at %s is running: submitted %s as job %s (the job runs inside the service)",
                    url, root, job.id)
        return follow_job(client, job.id, url)


def follow_job(client: httpx.Client, job_id: str, url: str) -> int:
    renderer = ProgressRenderer()
    view: JobView | None = None
    lost_since: float | None = None
    try:
        while True:
            try:
                response = client.get(f"/api/jobs/{job_id}")
                lost_since = None
            except httpx.TransportError as exc:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > RECONNECT_FOR:
                    renderer.close()
                    logger.error("the service at %s stopped answering (%s). An unfinished job resumes when the "
                                 "service starts again; follow it with --attach %s", url, exc, job_id)
                    return EXIT_FAILED
                time.sleep(POLL_INTERVAL)
                continue
            if response.status_code != 200:
                renderer.close()
                logger.error("cannot follow job %s (%d): %s", job_id, response.status_code, _detail(response))
                return EXIT_FAILED
            view = JobView.from_dict(response.json())
            renderer.update(view.progress, view.status)
            if view.status.finished:
                break
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        renderer.close()
        logger.info("detached from job %s; it keeps running inside the service.\n"
                    "  follow it:  python -m app.ingest --attach %s   (or: curl %s/api/jobs/%s)\n"
                    "  cancel it:  python -m app.ingest --cancel %s   (or: curl -X DELETE %s/api/jobs/%s)",
                    job_id, job_id, url, job_id, job_id, url, job_id)
        return EXIT_OK
    renderer.close()
    message = None if view.status is JobStatus.COMPLETED else view.message
    logger.info("%s", format_summary(view.path, view.progress, view.status.value, message))
    return EXIT_OK if view.status is JobStatus.COMPLETED else EXIT_FAILED


def cancel_job(client: httpx.Client, job_id: str) -> int:
    response = client.delete(f"/api/jobs/{job_id}")
    if response.status_code != 200:
        logger.error("cannot cancel job %s (%d): %s", job_id, response.status_code, _detail(response))
        return EXIT_FAILED
    view = JobView.from_dict(response.json())
    logger.info("job %s is %s: %s", job_id, view.status.value, view.message or progress_line(view.progress))
    return EXIT_OK


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:500]


# ------------------------------------------------------------------------------------------------- local


def run_dry(root: Path, options: IngestOptions, settings: Settings) -> int:
    state = IngestState(settings.state_dir / STATE_FILE)
    try:
        job = IngestJob(root=root, options=options, service=None, state=state, settings=settings)
        job.run()
    finally:
        state.close()
    c = job.progress().counts
    logger.info("dry run over %s: %d image files, %d to read (new or changed), %d already done; nothing written",
                root, c.seen, c.ingested, c.skipped)
    return EXIT_OK


def tune_for_throughput(settings: Settings) -> Settings:
    """On a CPU, unless ORT_THREADS or GPU_CONCURRENCY are set: one ONNX Runtime thread per engine batch and one
    inference worker per core. At batch size 1 these small models use a second intra-op thread poorly (measured
    on 2 cores: 19 images/s with 2 threads x 1 worker, 28 with 1 thread x 2 workers), and the image work around
    the model runs in parallel too. The service keeps its own settings, tuned for request latency."""
    if "ort_threads" in settings.model_fields_set or "gpu_concurrency" in settings.model_fields_set:
        return settings
    if select_providers(settings.providers) != ["CPUExecutionProvider"]:
        return settings
    cores = os.cpu_count() or 1
    workers = max(1, min(cores, MAX_CPU_INFER_WORKERS))
    return settings.model_copy(update={"ort_threads": max(1, cores // workers), "gpu_concurrency": workers})


def run_local(root: Path, options: IngestOptions, settings: Settings) -> int:
    """The whole pipeline in this process: the model session and the store are opened here."""
    settings = tune_for_throughput(settings)
    try:
        gate = InferenceGate(settings.gpu_concurrency, settings.gpu_acquire_timeout)
        engine = FaceEngine.from_settings(settings, gate)
        store = open_store(settings, dim=engine.dim, pack=engine.fingerprint)
    except OceanoError as exc:
        logger.error("%s", exc.message)
        return EXIT_FAILED
    state = None
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        state = IngestState(settings.state_dir / STATE_FILE)
        service = FaceService(settings=settings, engine=engine, store=store, thumbs=ThumbnailStore(settings.thumbs_dir))
        job = IngestJob(root=root, options=options, service=service, state=state, settings=settings)
        outcome, error = run_with_progress(job)
    finally:
        if state is not None:
            state.close()
        store.close()
    progress = job.progress()
    if error is not None:
        logger.error("%s", format_summary(str(root), progress, "stopped", error))
        return EXIT_FAILED
    if outcome is RunOutcome.STOPPED:
        logger.info("%s", format_summary(str(root), progress, "interrupted",
                                         "everything done so far is kept; run the same command again to resume"))
        return EXIT_INTERRUPTED
    logger.info("%s", format_summary(str(root), progress, "completed", None))
    return EXIT_OK


def run_with_progress(job: IngestJob) -> tuple[RunOutcome | None, str | None]:
    """Runs the job in a thread while this (main) thread renders progress. Ctrl-C stops the job after its
    current batch is committed; a second Ctrl-C quits at once (still safe: nothing uncommitted is marked done)."""
    result: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            result["outcome"] = job.run()
        except OceanoError as exc:
            result["error"] = exc.message
        except Exception as exc:
            logger.exception("the ingest run failed")
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            finished.set()

    thread = threading.Thread(target=target, name="ingest-run")
    renderer = ProgressRenderer()
    thread.start()
    interrupted = False
    # An Event, not Thread.join(timeout): a join interrupted by Ctrl-C can leave the thread looking finished
    # (is_alive() False) while it still runs, and the interpreter would then shut down under it.
    while not finished.is_set():
        try:
            finished.wait(0.5)
            renderer.update(job.progress(), None)
        except KeyboardInterrupt:
            if interrupted:
                renderer.close()
                logger.warning("quitting now; files not yet committed are redone on the next run")
                os._exit(EXIT_INTERRUPTED)
            interrupted = True
            logger.warning("stopping after the current batch is committed (Ctrl-C again to quit at once)")
            job.stop()
    thread.join()
    renderer.close()
    return result.get("outcome"), result.get("error")


# ------------------------------------------------------------------------------------------------- output


class ProgressRenderer:
    """A tqdm bar on a terminal; a plain log line every LOG_INTERVAL seconds otherwise (logs, docker exec -T)."""

    def __init__(self, *, tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._clock = clock
        self._bar: Any = None
        self._last_log = clock()

    def update(self, progress: Progress, status: JobStatus | None) -> None:
        c = progress.counts
        if self.tty:
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(total=c.total, unit="file", dynamic_ncols=True, file=sys.stderr,
                                 desc="ingest", bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                 "[{elapsed}{postfix}]")
            if c.total is not None and self._bar.total != c.total:
                self._bar.total = c.total
            self._bar.n = c.handled
            eta = "?" if progress.eta_s is None else format_duration(progress.eta_s)
            self._bar.set_postfix_str(f"{progress.files_per_s:.1f} files/s, {progress.faces_per_s:.1f} faces/s, "
                                      f"ETA {eta}, {c.faces_added} faces, {c.failed} failed", refresh=True)
        elif self._clock() - self._last_log >= LOG_INTERVAL:
            self._last_log = self._clock()
            prefix = f"[{status.value}] " if status is not None else ""
            logger.info("%s%s", prefix, progress_line(progress))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_summary(path: str, progress: Progress, outcome: str, message: str | None) -> str:
    c = progress.counts
    reasons = ", ".join(f"{r['reason']} ({r['count']})" for r in progress.top_reasons)
    images_per_s = c.done / progress.elapsed if progress.elapsed else 0.0
    lines = [
        f"ingest of {path} {outcome}" + (f": {message}" if message else ""),
        f"  files seen   {c.seen}",
        f"  ingested     {c.ingested}",
        f"  skipped      {c.skipped} (already done)",
        f"  no face      {c.no_face}",
        f"  failed       {c.failed}" + (f"; top reasons: {reasons}" if reasons else ""),
        f"  faces added  {c.faces_added}",
        f"  wall time    {format_duration(progress.elapsed)} ({progress.elapsed:.1f}s), {images_per_s:.2f} images/s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
