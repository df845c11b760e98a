"""Ingest jobs API: POST /api/ingest, GET /api/jobs, GET /api/jobs/{id}, DELETE /api/jobs/{id}.

The job runs inside the service process (app.jobs.JobManager), sharing its engine and store; the
`python -m app.ingest` command submits here when the service is running."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app.deps import JobsDep
from app.jobs import DEFAULT_BATCH, DEFAULT_WORKERS, MAX_BATCH, MAX_WORKERS, IngestOptions, JobStatus, JobView

router = APIRouter(tags=["ingest"])


class IngestIn(BaseModel):
    path: str = Field(min_length=1, max_length=4096,
                      description="absolute path of a folder (walked recursively) or of one image, as the "
                                  "service sees it")
    batch: int = Field(DEFAULT_BATCH, ge=1, le=MAX_BATCH, description="points per upsert")
    workers: int = Field(DEFAULT_WORKERS, ge=1, le=MAX_WORKERS, description="decode threads")
    resume: bool = Field(True, description="skip files already done (false: reprocess everything)")
    dry_run: bool = Field(False, description="only count what would be ingested")
    exclude: list[str] = Field(default_factory=list, max_length=100,
                               description="glob patterns (relative path or name) to leave out")
    follow_symlinks: bool = False


class JobOptionsOut(BaseModel):
    batch: int
    workers: int
    resume: bool
    dry_run: bool
    exclude: list[str]
    follow_symlinks: bool


class CountsOut(BaseModel):
    total: int | None = Field(description="files to look at, once the listing has finished")
    seen: int
    done: int = Field(description="ingested + no_face")
    ingested: int
    no_face: int
    skipped: int = Field(description="already done in an earlier run, unchanged")
    failed: int
    faces_added: int
    in_progress: int = Field(description="read and analysed, waiting for their upsert (not in the store yet)")


class FileErrorOut(BaseModel):
    path: str
    reason: str


class ReasonOut(BaseModel):
    reason: str
    count: int


class JobOut(BaseModel):
    id: str
    path: str
    status: JobStatus
    options: JobOptionsOut
    created_at: float
    started_at: float | None
    finished_at: float | None
    counts: CountsOut
    elapsed_s: float
    files_per_s: float
    faces_per_s: float
    eta_s: float | None
    last_errors: list[FileErrorOut]
    top_reasons: list[ReasonOut]
    message: str | None
    attempts: int


class JobListOut(BaseModel):
    jobs: list[JobOut]


def job_out(view: JobView) -> JobOut:
    return JobOut.model_validate(view.to_dict())


@router.post("/api/ingest", response_model=JobOut, status_code=202)
async def submit_ingest(body: IngestIn, jobs: JobsDep) -> JobOut:
    """Queue a background ingest of a folder on the service's filesystem; follow it with GET /api/jobs/{id}."""
    options = IngestOptions(batch=body.batch, workers=body.workers, resume=body.resume, dry_run=body.dry_run,
                            exclude=tuple(body.exclude), follow_symlinks=body.follow_symlinks)
    return job_out(await run_in_threadpool(lambda: jobs.submit(body.path, options)))


@router.get("/api/jobs", response_model=JobListOut)
async def list_jobs(jobs: JobsDep,
                    limit: Annotated[int, Query(ge=1, le=1000, description="most recent first")] = 50) -> JobListOut:
    return JobListOut(jobs=[job_out(v) for v in await run_in_threadpool(lambda: jobs.list(limit))])


@router.get("/api/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    """Status (pending -> processing -> completed | failed | cancelled), counts, throughput, ETA, last errors."""
    return job_out(await run_in_threadpool(lambda: jobs.get(job_id)))


@router.delete("/api/jobs/{job_id}", response_model=JobOut)
async def cancel_job(job_id: str, jobs: JobsDep) -> JobOut:
    """Cancel a job: a queued one at once, a running one after its current batch (files done are kept)."""
    return job_out(await run_in_threadpool(lambda: jobs.cancel(job_id, wait=10.0)))
