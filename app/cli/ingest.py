"""The `python -m app.ingest` command: bulk ingest of a folder of photos (or one photo), resumable and crash-safe.

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
from pathlib import Path
from typing import Any

from app.bootstrap import open_services
from app.cli.ingest_client import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    cancel_job,
    connect,
    follow_job,
    probe_service,
    submit_job,
)
from app.config import Settings
from app.engine import select_providers
from app.errors import InvalidRequest, OceanoError
from app.ingest.model import DEFAULT_BATCH, DEFAULT_WORKERS, STATE_FILE, IngestOptions, RunOutcome
from app.ingest.pipeline import IngestJob
from app.ingest.report import ProgressRenderer, format_summary
from app.ingest.state import IngestState

logger = logging.getLogger(__name__)

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
work to it (which reads only inside its INGEST_ROOTS; once the service has API keys, set OCEANO_API_KEY to one
with the write scope). With QDRANT_URL (a Qdrant server) --local may run beside the service.
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
        prog="python -m app.ingest",
        allow_abbrev=False,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Index every face of a folder of photos into Oceano. Resumable: progress is kept per file "
        "in STATE_DIR, so the command can be killed and run again without losing or duplicating "
        "anything. Submits the work to the running service when there is one.",
    )
    parser.add_argument(
        "--path",
        "--folder",
        dest="path",
        metavar="PATH",
        help="a folder (walked recursively; .jpg .jpeg .png .webp .bmp .tif .tiff .gif, any case) "
        "or a single image file. --folder is an alias",
    )
    parser.add_argument(
        "--batch",
        type=_positive,
        default=DEFAULT_BATCH,
        metavar="N",
        help="faces (points) per upsert into the vector store; files are marked done after each "
        "upsert (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=DEFAULT_WORKERS,
        metavar="N",
        help="threads reading and decoding images ahead of the face models (default %(default)s)",
    )
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="reprocess every file, also those already done (idempotent: the same faces get the same ids)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only walk the folder and report how many files would be ingested and how many are "
        "already done; loads no model, writes nothing",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files and folders whose path relative to PATH, or whose name, matches "
        "this glob (e.g. '*.gif', 'tmp/*', '.*'); repeatable",
    )
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="follow symbolic links to files and folders (each folder is visited once); by default links are skipped",
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        help="URL of the running service (default http://127.0.0.1:$PORT); when given, the service must answer",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="run in this process even when the service answers (for QDRANT_URL set-ups; the "
        "embedded store refuses a second process)",
    )
    parser.add_argument("--attach", metavar="JOB_ID", help="follow a job already submitted to the service")
    parser.add_argument("--cancel", metavar="JOB_ID", help="cancel a job of the service")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per progress poll
    url = (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    if args.attach or args.cancel:
        if not probe_service(url):
            logger.error("no Oceano service answers at %s (use --url)", url)
            return EXIT_FAILED
        with connect(url) as client:
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
        options = IngestOptions(
            batch=args.batch,
            workers=args.workers,
            resume=args.resume,
            dry_run=args.dry_run,
            exclude=tuple(args.exclude),
            follow_symlinks=args.follow_symlinks,
        )
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


def run_dry(root: Path, options: IngestOptions, settings: Settings) -> int:
    state = IngestState(settings.state_dir / STATE_FILE)
    try:
        job = IngestJob(root=root, options=options, service=None, state=state, settings=settings)
        job.run()
    finally:
        state.close()
    c = job.progress().counts
    logger.info(
        "dry run over %s: %d image files, %d to read (new or changed), %d already done; nothing written",
        root,
        c.seen,
        c.ingested,
        c.skipped,
    )
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
        services = open_services(settings, batcher=False, jobs=False, keys=False)
    except OceanoError as exc:
        logger.error("%s", exc.message)
        return EXIT_FAILED
    try:
        assert services.state is not None
        job = IngestJob(root=root, options=options, service=services.service, state=services.state, settings=settings)
        outcome, error = run_with_progress(job)
    finally:
        services.close()
    progress = job.progress()
    if error is not None:
        logger.error("%s", format_summary(str(root), progress, "stopped", error))
        return EXIT_FAILED
    if outcome is RunOutcome.STOPPED:
        logger.info(
            "%s",
            format_summary(
                str(root),
                progress,
                "interrupted",
                "everything done so far is kept; run the same command again to resume",
            ),
        )
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
