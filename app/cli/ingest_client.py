"""The command's side of a job that runs inside the service: find the service, submit, follow, cancel (HTTP)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx

from app.ingest.model import IngestOptions, JobOut, JobStatus, JobView
from app.ingest.report import ProgressRenderer, format_summary, progress_line

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PROBE_TIMEOUT = 2.0
POLL_INTERVAL = 1.0
API_KEY_ENV = "OCEANO_API_KEY"
RECONNECT_FOR = 60.0  # seconds to keep trying when the service stops answering while a job is followed


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


def connect(url: str) -> httpx.Client:
    """A client of the service, with the API key from OCEANO_API_KEY when set (needed once keys exist)."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    return httpx.Client(base_url=url, timeout=30.0, headers={"X-API-Key": key} if key else None)


def submit_job(url: str, root: Path, options: IngestOptions) -> int:
    with connect(url) as client:
        try:
            response = client.post("/api/ingest", json={"path": str(root), **options.to_dict()})
        except httpx.HTTPError as exc:
            logger.error("could not submit the job to the service at %s: %s", url, exc)
            return EXIT_FAILED
        if response.status_code != 202:
            detail = _detail(response)
            hint = (
                f"\n  set {API_KEY_ENV} to a key with the write scope"
                if response.status_code == 401
                else "\n  or stop the service and run this command again: it then runs in this process"
                if "INGEST_ROOTS" in detail
                else ""
            )
            logger.error("the service refused the job (%d): %s%s", response.status_code, detail, hint)
            return EXIT_FAILED
        job = JobView.from_out(JobOut.model_validate(response.json()))
        logger.info(
            "the service at %s is running: submitted %s as job %s (the job runs inside the service)", url, root, job.id
        )
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
                    logger.error(
                        "the service at %s stopped answering (%s). An unfinished job resumes when the "
                        "service starts again; follow it with --attach %s",
                        url,
                        exc,
                        job_id,
                    )
                    return EXIT_FAILED
                time.sleep(POLL_INTERVAL)
                continue
            if response.status_code != 200:
                renderer.close()
                logger.error("cannot follow job %s (%d): %s", job_id, response.status_code, _detail(response))
                return EXIT_FAILED
            view = JobView.from_out(JobOut.model_validate(response.json()))
            renderer.update(view.progress, view.status)
            if view.status.finished:
                break
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        renderer.close()
        logger.info(
            "detached from job %s; it keeps running inside the service.\n"
            "  follow it:  python -m app.ingest --attach %s   (or: curl %s/api/jobs/%s)\n"
            "  cancel it:  python -m app.ingest --cancel %s   (or: curl -X DELETE %s/api/jobs/%s)",
            job_id,
            job_id,
            url,
            job_id,
            job_id,
            url,
            job_id,
        )
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
    view = JobView.from_out(JobOut.model_validate(response.json()))
    logger.info("job %s is %s: %s", job_id, view.status.value, view.message or progress_line(view.progress))
    return EXIT_OK


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:500]
