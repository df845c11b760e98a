"""Ingest jobs: POST /api/ingest, GET /api/jobs, GET /api/jobs/{id}, DELETE /api/jobs/{id}.

The job runs inside the service process (app.ingest.manager.JobManager), sharing its engine and store; the
`python -m app.ingest` command submits here when the service is running."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from app.api.contract import errors
from app.api.deps import JobsDep
from app.api.schemas import IngestIn, JobListOut
from app.ingest.model import IngestOptions, JobOut

router = APIRouter(tags=["ingest"])


@router.post("/api/ingest", response_model=JobOut, status_code=202, responses=errors(400, 422, 503))
async def submit_ingest(body: IngestIn, jobs: JobsDep) -> JobOut:
    """Queue a background ingest of a folder on the service's filesystem; follow it with GET /api/jobs/{id}."""
    options = IngestOptions(
        batch=body.batch,
        workers=body.workers,
        resume=body.resume,
        dry_run=body.dry_run,
        exclude=tuple(body.exclude),
        follow_symlinks=body.follow_symlinks,
    )
    return (await run_in_threadpool(lambda: jobs.submit(body.path, options))).to_out()


@router.get("/api/jobs", response_model=JobListOut, responses=errors(422))
async def list_jobs(
    jobs: JobsDep, limit: Annotated[int, Query(ge=1, le=1000, description="most recent first")] = 50
) -> JobListOut:
    return JobListOut(jobs=[v.to_out() for v in await run_in_threadpool(lambda: jobs.list(limit))])


@router.get("/api/jobs/{job_id}", response_model=JobOut, responses=errors(404, 422))
async def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    """Status (pending -> processing -> completed | failed | cancelled), counts, throughput, ETA, last errors."""
    return (await run_in_threadpool(lambda: jobs.get(job_id))).to_out()


@router.delete("/api/jobs/{job_id}", response_model=JobOut, responses=errors(404, 422))
async def cancel_job(job_id: str, jobs: JobsDep) -> JobOut:
    """Cancel a job: a queued one at once, a running one after its current batch (files done are kept)."""
    return (await run_in_threadpool(lambda: jobs.cancel(job_id, wait=10.0))).to_out()
