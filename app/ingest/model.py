"""The ingest data model: options and their bounds (defined once), job and file statuses, counts and progress,
file records, and the job's wire schema (JobOut: what GET /api/jobs/{id} answers and the CLI reads back)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from app.errors import InvalidRequest

STATE_FILE = "ingest.sqlite3"
DEFAULT_BATCH = 1024  # points per upsert
DEFAULT_WORKERS = 32  # decode threads
MAX_WORKERS = 256
MAX_BATCH = 65536
LAST_ERRORS = 20
TOP_REASONS = 5


class JobKind(StrEnum):
    """What a background job does: ingest a folder (app.ingest), or group unknown faces into clusters (its runner
    comes from app.people, injected by app.bootstrap)."""

    INGEST = "ingest"
    CLUSTER = "cluster"


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
    faces_flagged: int = 0  # of faces_added: under QUALITY_MIN, stored with quality_flagged (QUALITY_POLICY=flag)
    faces_refused: int = 0  # found but not stored: under QUALITY_MIN with QUALITY_POLICY=refuse
    in_progress: int = 0  # read and analysed, waiting for their upsert (not done yet: not in the store yet)

    @property
    def done(self) -> int:
        return self.ingested + self.no_face

    @property
    def handled(self) -> int:
        """Files this run is through with, or nearly (in_progress): what a progress bar shows."""
        return self.done + self.skipped + self.failed + self.in_progress

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "seen": self.seen,
            "done": self.done,
            "ingested": self.ingested,
            "no_face": self.no_face,
            "skipped": self.skipped,
            "failed": self.failed,
            "faces_added": self.faces_added,
            "faces_flagged": self.faces_flagged,
            "faces_refused": self.faces_refused,
            "in_progress": self.in_progress,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        return cls(
            **{
                k: data[k]
                for k in (
                    "total",
                    "seen",
                    "ingested",
                    "no_face",
                    "skipped",
                    "failed",
                    "faces_added",
                    "faces_flagged",
                    "faces_refused",
                    "in_progress",
                )
                if k in data
            }
        )


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
    detail: dict[str, Any] = field(default_factory=dict)  # what a job of another kind counts (a cluster job's faces)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.to_dict(),
            "elapsed_s": round(self.elapsed, 2),
            "files_per_s": round(self.files_per_s, 2),
            "faces_per_s": round(self.faces_per_s, 2),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "last_errors": self.last_errors,
            "top_reasons": self.top_reasons,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(
            counts=Counts.from_dict(data.get("counts", {})),
            elapsed=float(data.get("elapsed_s", 0.0)),
            files_per_s=float(data.get("files_per_s", 0.0)),
            faces_per_s=float(data.get("faces_per_s", 0.0)),
            eta_s=data.get("eta_s"),
            last_errors=list(data.get("last_errors", [])),
            top_reasons=list(data.get("top_reasons", [])),
            detail=dict(data.get("detail") or {}),
        )


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


# ------------------------------------------------------------------------------------------------- wire schema


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
    faces_flagged: int = Field(0, description="of faces_added: quality under QUALITY_MIN (QUALITY_POLICY=flag)")
    faces_refused: int = Field(0, description="found but not stored: quality under QUALITY_MIN (QUALITY_POLICY=refuse)")
    in_progress: int = Field(description="read and analysed, waiting for their upsert (not in the store yet)")


class FileErrorOut(BaseModel):
    path: str
    reason: str


class ReasonOut(BaseModel):
    reason: str
    count: int


class JobOut(BaseModel):
    """A background job as the API answers it, and as the CLI reads it back (the one wire schema)."""

    id: str
    kind: JobKind = Field(default=JobKind.INGEST, description="ingest: a folder; cluster: unknown faces grouped")
    path: str = Field(description="the folder or file an ingest job reads (empty for other kinds)")
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
    detail: dict[str, int | float | str | None] = Field(
        default_factory=dict,
        description="a cluster job's counts: pass (1: core faces, 2: the others), faces_seen, clustered, "
        "new_clusters, clusters_touched",
    )


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
    collection: str | None = None  # its collection key (app.ingest.state); not on the wire
    kind: JobKind = JobKind.INGEST

    def to_out(self) -> JobOut:
        return JobOut.model_validate(
            {
                "id": self.id,
                "kind": self.kind,
                "path": self.path,
                "status": self.status,
                "options": self.options.to_dict(),
                "created_at": self.created_at,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                **self.progress.to_dict(),
                "message": self.message,
                "attempts": self.attempts,
            }
        )

    @classmethod
    def from_out(cls, out: JobOut) -> JobView:
        data = out.model_dump()
        return cls(
            id=out.id,
            path=out.path,
            status=out.status,
            options=IngestOptions.from_dict(data["options"]),
            created_at=out.created_at,
            started_at=out.started_at,
            finished_at=out.finished_at,
            progress=Progress.from_dict(data),
            message=out.message,
            attempts=out.attempts,
            kind=out.kind,
        )
