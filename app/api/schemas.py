"""Request and response schemas of the HTTP API, and the conversions from the service's types to them."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.faces import FaceQuality
from app.heads import HeadListing, HeadSpec, ModelInfo
from app.ingest.model import DEFAULT_BATCH, DEFAULT_WORKERS, MAX_BATCH, MAX_WORKERS, JobOut
from app.people import IdentifiedFace
from app.service import AnalyzedFace, IndexedImage, SearchedFace
from app.store import CollectionInfo, Match


class ErrorOut(BaseModel):
    """Every error answer of the API (4xx, 5xx), whatever raised it."""

    detail: str = Field(description="what went wrong and what to do about it, for a person")
    error: str = Field(
        description="a short stable code for programs, e.g. bad_image, too_large, busy, not_found, "
        "invalid_request, method_not_allowed"
    )


class MatchOut(BaseModel):
    id: str
    score: float
    file: str | None
    face_index: int | None
    subject: str | None
    thumb_url: str
    same_person: bool | None = Field(
        default=None, description="the score is at or over the 'same person' threshold in force (GET /status)"
    )


class IdentityOut(BaseModel):
    """Who the face is: the enrolled subject whose matches agree best (a vote of the nearest matches that have a
    subject, at the threshold in force); one subject goes to at most one face of a photo."""

    subject: str
    same_person: bool = Field(description="false: the subject went to another face of this photo that matched better")
    confidence: float = Field(description="the subject's best match score (cosine similarity)")
    threshold: float = Field(description="the 'same person' threshold it was decided at")


class QualityOut(BaseModel):
    """How fit the face is for recognition (README "Face quality"), measured when it was detected."""

    score: float = Field(description="one score in [0, 1] combining the others (1: as good as it gets)")
    size: float = Field(description="the shorter side of the face's box, in the original image's pixels")
    sharpness: float = Field(description="variance of the Laplacian over the middle of the aligned 112x112 crop")
    yaw: float = Field(description="degrees, from the five keypoints (positive: turned to the image's right)")
    pitch: float = Field(description="degrees, from the five keypoints (positive: chin up)")
    roll: float = Field(description="degrees, the eye line's angle (undone by alignment: it costs no score)")
    det_score: float = Field(description="the detector's score")
    flagged: bool = Field(description="the score is under QUALITY_MIN")


class FaceOut(BaseModel):
    """A face and its matches. With ?heads=..., each head adds its answer as further keys, e.g.
    "emotion": {"label": "happy", "scores": {...}}, "gender": "F", "age": 31."""

    model_config = ConfigDict(extra="allow")

    bbox: list[float]
    det_score: float
    kps: list[list[float]]
    matches: list[MatchOut]
    identity: IdentityOut | None = Field(default=None, description="null: no enrolled subject passes the threshold")
    ref: str | None = Field(default=None, description="this query face, for POST /api/feedback (`query`)")
    quality: QualityOut | None = None


class AnalyzedFaceOut(BaseModel):
    """A face and one key per head run on it, e.g. "emotion": {"label": "happy", "scores": {...}},
    "gender": "F", "age": 31 (genderage)."""

    model_config = ConfigDict(extra="allow")

    bbox: list[float]
    det_score: float
    kps: list[list[float]]
    quality: QualityOut | None = None


class AnalyzeOut(BaseModel):
    faces: list[AnalyzedFaceOut]
    heads: list[str]
    took_ms: float
    model: str


class HeadOut(BaseModel):
    name: str
    available: bool
    reason: str | None = Field(description="why an unavailable head is unavailable")
    default: bool = Field(description="run on /api/analyze and the HTML page when no heads are named (HEADS)")
    origin: str
    output_keys: list[str] = Field(description="the keys this head adds to each face")
    spec: HeadSpec


class HeadsOut(BaseModel):
    heads: list[HeadOut]
    default: list[str]


class HeadDetailOut(HeadOut):
    labels: list[str] = Field(description="the classes (softmax), values (regression) or genders (genderage)")
    model_info: ModelInfo | None = Field(description="the loaded ONNX model; null when unavailable")


class SearchOut(BaseModel):
    faces: list[FaceOut]
    took_ms: float
    model: str


class BatchSearchItem(BaseModel):
    filename: str | None
    faces: list[FaceOut]
    error: str | None = None


class BatchSearchOut(BaseModel):
    results: list[BatchSearchItem]
    took_ms: float
    model: str


class IndexedFaceOut(BaseModel):
    """A face found in the photo: stored under `id`, or refused and why."""

    id: str | None = Field(description="the stored face's id; null: refused")
    face_index: int
    bbox: list[float]
    det_score: float
    quality: QualityOut | None
    refused: str | None = Field(
        default=None, description="why it was not indexed (its quality score under QUALITY_MIN, QUALITY_POLICY=refuse)"
    )


class IndexOut(BaseModel):
    file: str
    ids: list[str] = Field(description="the faces stored")
    faces: int = Field(description="how many faces were stored")
    replaced: int
    took_ms: float
    detected: list[IndexedFaceOut] = Field(
        default_factory=list, description="every face found, in order, with its quality: stored or refused"
    )
    refused: int = Field(default=0, description="faces found but not indexed (QUALITY_POLICY=refuse)")
    flagged: int = Field(default=0, description="faces stored with quality_flagged (under QUALITY_MIN)")
    message: str | None = Field(default=None, description="what a person should know, e.g. every face was refused")


class DeleteOut(BaseModel):
    deleted: list[str]


class HealthChecks(BaseModel):
    model_loaded: bool
    qdrant_healthy: bool
    shutdown_initiated: bool


class HealthOut(BaseModel):
    status: str
    ready: bool
    checks: HealthChecks
    index_building: bool = Field(default=False, description="an index build is running (searches still answer)")
    unindexed: int = Field(default=0, description="points searched exactly until the next index build")


class RuntimeOut(BaseModel):
    providers: list[str] = Field(description="ONNX Runtime providers asked for, in preference order")
    provider_options: dict[str, dict[str, str]] = Field(description="each provider's options in force")
    providers_in_use: list[str] = Field(description="the providers the detector's session got")
    threads: int = Field(description="ONNX Runtime intra-op threads (0: onnxruntime picks)")
    standin: bool = Field(description="ENGINE_STANDIN: recorded outputs replayed (benchmarks only)")
    batch_sizes: dict[str, list[int]] = Field(description="the only batch sizes each face model runs at")
    head_batch_sizes: dict[str, list[int]] = Field(description="the same, per loaded head")
    detector_canvases: list[list[int]] = Field(description="detector canvases (width, height) one image may use")
    warm_up_s: float = Field(description="seconds the face models' warm-up took at start-up")


class IndexStateOut(BaseModel):
    """The collection and its index (part of GET /status and of the people overview)."""

    collection: str
    backend: str
    vectors: int
    indexed_vectors: int
    status: str
    index_building: bool = Field(description="an index build is running (searches still answer)")
    unindexed: int = Field(description="points searched exactly until the next index build")

    @classmethod
    def fields_of(cls, info: CollectionInfo) -> dict[str, Any]:
        return {
            "collection": info.name,
            "backend": info.backend.value,
            "vectors": info.vectors,
            "indexed_vectors": info.indexed,
            "status": info.status,
            "index_building": info.index_building,
            "unindexed": info.unindexed,
        }


class StatusOut(IndexStateOut):
    model: str
    model_fingerprint: str
    providers: list[str]
    runtime: RuntimeOut
    gpu_concurrency: int
    inference_in_use: int
    inference_waiting: int
    threshold: float | None = Field(default=None, description="the 'same person' threshold in force")
    threshold_source: str | None = Field(
        default=None, description="where it comes from: 'calibrated: ...' or 'default for pack ...'"
    )


class IngestIn(BaseModel):
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="absolute path of a folder (walked recursively) or of one image, as the service sees it",
    )
    batch: int = Field(DEFAULT_BATCH, ge=1, le=MAX_BATCH, description="points per upsert")
    workers: int = Field(DEFAULT_WORKERS, ge=1, le=MAX_WORKERS, description="decode threads")
    resume: bool = Field(True, description="skip files already done (false: reprocess everything)")
    dry_run: bool = Field(False, description="only count what would be ingested")
    exclude: list[str] = Field(
        default_factory=list, max_length=100, description="glob patterns (relative path or name) to leave out"
    )

    @field_validator("path")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("a path cannot hold a NUL character (\\x00)")
        return value

    follow_symlinks: bool = False


class JobListOut(BaseModel):
    jobs: list[JobOut]


def match_out(m: Match, same_person: bool | None) -> MatchOut:
    """A stored face found by a search (the payload keys it reads are app.service.MATCH_KEYS)."""
    return MatchOut(
        id=m.id,
        score=round(m.score, 4),
        file=m.payload.get("file"),
        face_index=m.payload.get("face_index"),
        subject=m.payload.get("subject"),
        thumb_url=f"/thumbs/{m.id}",
        same_person=same_person,
    )


def face_out(face: SearchedFace) -> FaceOut:
    who = face if isinstance(face, IdentifiedFace) else None  # searched by app.people's service
    same: list[bool | None] = list(who.same_person) if who else [None] * len(face.matches)
    identity = who.identity if who else None
    return FaceOut(
        bbox=face.bbox,
        det_score=round(face.face.det_score, 4),
        kps=face.kps,
        matches=[match_out(m, passes) for m, passes in zip(face.matches, same, strict=True)],
        identity=None
        if identity is None
        else IdentityOut(
            subject=identity.subject,
            same_person=identity.same_person,
            confidence=identity.confidence,
            threshold=identity.threshold,
        ),
        ref=who.ref if who else None,
        quality=quality_out(face.face.quality),
        **face.face.attributes,
    )


def quality_out(quality: FaceQuality | None) -> QualityOut | None:
    return None if quality is None else QualityOut.model_validate(dataclasses.asdict(quality))


def analyzed_out(face: AnalyzedFace) -> AnalyzedFaceOut:
    return AnalyzedFaceOut(
        bbox=face.bbox,
        det_score=round(face.face.det_score, 4),
        kps=face.kps,
        quality=quality_out(face.face.quality),
        **face.face.attributes,
    )


def index_out(result: IndexedImage, took_ms: float) -> IndexOut:
    refused = result.refused
    message = None
    if result.faces and not result.ids:
        message = (
            f"no face of this photo was indexed: all {len(refused)} were refused for quality under QUALITY_MIN "
            f"(see `detected`); send a sharper, larger, more frontal photo"
        )
    return IndexOut(
        file=result.file,
        ids=result.ids,
        faces=len(result.ids),
        replaced=len(result.replaced),
        took_ms=took_ms,
        detected=[
            IndexedFaceOut(
                id=f.id,
                face_index=f.index,
                bbox=f.bbox,
                det_score=f.det_score,
                quality=quality_out(f.quality),
                refused=f.refused,
            )
            for f in result.faces
        ],
        refused=len(refused),
        flagged=result.flagged,
        message=message,
    )


def head_out(entry: HeadListing) -> HeadOut:
    return HeadOut(
        name=entry.spec.name,
        available=entry.available,
        reason=entry.reason,
        default=entry.default,
        origin=entry.origin,
        output_keys=list(entry.spec.output_keys),
        spec=entry.spec,
    )
