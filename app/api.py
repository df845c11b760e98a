"""JSON routes: /api/*, /health, /status, /metrics. Blocking work runs in the thread pool."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from app.deps import ServiceDep, SettingsDep
from app.errors import ImageTooLarge, InvalidRequest, NoSuchHead, NotFound, OceanoError, RequestTimeout
from app.heads import Head, HeadListing, HeadSpec, ModelInfo
from app.service import AnalyzedFace, FaceService, ImageToIndex, SearchedFace, content_hash

logger = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")


class MatchOut(BaseModel):
    id: str
    score: float
    file: str | None
    face_index: int | None
    subject: str | None
    thumb_url: str


class FaceOut(BaseModel):
    """A face and its matches. With ?heads=..., each head adds its answer as further keys, e.g.
    "emotion": {"label": "happy", "scores": {...}}, "gender": "F", "age": 31."""

    model_config = ConfigDict(extra="allow")

    bbox: list[float]
    det_score: float
    kps: list[list[float]]
    matches: list[MatchOut]


class AnalyzedFaceOut(BaseModel):
    """A face and one key per head run on it, e.g. "emotion": {"label": "happy", "scores": {...}},
    "gender": "F", "age": 31 (genderage)."""

    model_config = ConfigDict(extra="allow")

    bbox: list[float]
    det_score: float
    kps: list[list[float]]


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


class IndexOut(BaseModel):
    file: str
    ids: list[str]
    faces: int
    replaced: int
    took_ms: float


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


class StatusOut(BaseModel):
    collection: str
    vectors: int
    indexed_vectors: int
    status: str
    model: str
    model_fingerprint: str
    backend: str
    providers: list[str]
    gpu_concurrency: int
    inference_in_use: int
    inference_waiting: int


async def run_blocking(request: Request, fn: Callable[[], T]) -> T:
    """Thread pool + REQUEST_TIMEOUT; the event loop never waits on decode or ONNX."""
    timeout = request.app.state.settings.request_timeout
    try:
        return await asyncio.wait_for(run_in_threadpool(fn), timeout=timeout)
    except TimeoutError as exc:
        raise RequestTimeout(f"request took longer than REQUEST_TIMEOUT={timeout:.0f}s") from exc


async def read_upload(file: UploadFile | None, max_bytes: int) -> bytes:
    if file is None:
        raise InvalidRequest("multipart field 'file' is required (an image upload)")
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"upload is over the {max_bytes / 2**20:.0f} MB limit (MAX_UPLOAD_MB)")
    return data


def face_out(face: SearchedFace) -> FaceOut:
    return FaceOut(
        bbox=face.bbox, det_score=round(face.face.det_score, 4), kps=face.kps,
        matches=[MatchOut(id=m.id, score=round(m.score, 4), file=m.payload.get("file"),
                          face_index=m.payload.get("face_index"), subject=m.payload.get("subject"),
                          thumb_url=f"/thumbs/{m.id}") for m in face.matches],
        **face.face.attributes,
    )


def analyzed_out(face: AnalyzedFace) -> AnalyzedFaceOut:
    return AnalyzedFaceOut(bbox=face.bbox, det_score=round(face.face.det_score, 4), kps=face.kps,
                           **face.face.attributes)


def search_bytes(service: FaceService, data: bytes, top_k: int | None,
                 threshold: float | None, heads: list[Head] | None = None) -> list[SearchedFace]:
    image = service.decode(data)
    return service.search([image], top_k=top_k, threshold=threshold, heads=heads or [])[0]


def head_out(entry: HeadListing) -> HeadOut:
    return HeadOut(name=entry.spec.name, available=entry.available, reason=entry.reason, default=entry.default,
                   origin=entry.origin, output_keys=list(entry.spec.output_keys), spec=entry.spec)


TopK = Annotated[int | None, Query(ge=1, le=100, description="matches per face (default TOP_K)")]
Threshold = Annotated[float | None, Query(ge=-1.0, le=1.0, description="minimum cosine similarity")]
Upload = Annotated[UploadFile | None, File(description="an image: JPEG, PNG, WebP, BMP, TIFF or GIF")]
HeadsQuery = Annotated[str | None, Query(max_length=512, description="comma-separated classifier heads to run "
                                                                     "on each face, e.g. emotion,genderage "
                                                                     "(GET /api/heads lists them)")]


@router.post("/api/search", response_model=SearchOut, tags=["search"])
async def api_search(request: Request, service: ServiceDep, settings: SettingsDep, file: Upload = None,
                     top_k: TopK = None, threshold: Threshold = None, heads: HeadsQuery = None) -> SearchOut:
    """Find every face in the photo and its most similar stored faces; `heads` adds their answers per face."""
    started = time.perf_counter()
    chosen = service.select_heads(heads or "")  # before the upload is read: a bad name costs nothing
    data = await read_upload(file, settings.max_upload_bytes)
    faces = await run_blocking(request, lambda: search_bytes(service, data, top_k, threshold, chosen))
    request.app.state.metrics.observe_search(len(faces), time.perf_counter() - started)
    return SearchOut(faces=[face_out(f) for f in faces], took_ms=round((time.perf_counter() - started) * 1e3, 2),
                     model=service.engine.pack.name)


@router.post("/api/search/batch", response_model=BatchSearchOut, tags=["search"])
async def api_search_batch(request: Request, service: ServiceDep, settings: SettingsDep,
                           files: Annotated[list[UploadFile], File(description="several images")],
                           top_k: TopK = None, threshold: Threshold = None,
                           heads: HeadsQuery = None) -> BatchSearchOut:
    """Search several photos in one call: all their faces go through the engine as one batch."""
    started = time.perf_counter()
    chosen = service.select_heads(heads or "")
    if not files or len(files) > 64:
        raise InvalidRequest("send between 1 and 64 files in the multipart field 'files'")
    blobs = [(f.filename, await read_upload(f, settings.max_upload_bytes)) for f in files]

    def work() -> list[BatchSearchItem]:
        decoded, items = [], []
        for name, data in blobs:
            try:
                decoded.append(service.decode(data))
                items.append(BatchSearchItem(filename=name, faces=[]))
            except OceanoError as exc:  # one bad file must not fail the others
                items.append(BatchSearchItem(filename=name, faces=[], error=exc.message))
        results = iter(service.search(decoded, top_k=top_k, threshold=threshold, heads=chosen))
        for item in items:
            if item.error is None:
                item.faces = [face_out(f) for f in next(results)]
        return items

    items = await run_blocking(request, work)
    return BatchSearchOut(results=items, took_ms=round((time.perf_counter() - started) * 1e3, 2),
                          model=service.engine.pack.name)


@router.post("/api/analyze", response_model=AnalyzeOut, tags=["heads"])
async def api_analyze(request: Request, service: ServiceDep, settings: SettingsDep, file: Upload = None,
                      heads: HeadsQuery = None,
                      heads_form: Annotated[str | None, Form(alias="heads", max_length=512,
                                                             description="the same as the query parameter")] = None
                      ) -> AnalyzeOut:
    """Every face in the photo (box, detector score, 5 keypoints) with the answers of the classifier heads: the
    default heads (HEADS) unless `heads` names others (as a query parameter or a form field); `heads=` (empty)
    runs none. Nothing is searched or stored."""
    started = time.perf_counter()
    if heads is not None and heads_form is not None and heads != heads_form:
        raise InvalidRequest("give `heads` once: as a query parameter or as a form field, not both")
    chosen = service.select_heads(heads if heads is not None else heads_form)
    data = await read_upload(file, settings.max_upload_bytes)

    def work() -> list[AnalyzedFace]:
        return service.analyze([service.decode(data)], heads=chosen)[0]

    faces = await run_blocking(request, work)
    return AnalyzeOut(faces=[analyzed_out(f) for f in faces], heads=[h.name for h in chosen],
                      took_ms=round((time.perf_counter() - started) * 1e3, 2), model=service.engine.pack.name)


@router.get("/api/heads", response_model=HeadsOut, tags=["heads"])
async def api_heads(service: ServiceDep) -> HeadsOut:
    """Every classifier head with its spec; unavailable ones (e.g. genderage without genderage.onnx in the
    model pack) say why."""
    entries = service.engine.heads.listings()
    return HeadsOut(heads=[head_out(e) for e in entries], default=[e.spec.name for e in entries if e.default])


@router.get("/api/heads/{name}", response_model=HeadDetailOut, tags=["heads"])
async def api_head(name: str, service: ServiceDep) -> HeadDetailOut:
    """One head: its spec, its classes (`labels`) and its loaded model (input shape, parameter count, ...)."""
    try:
        entry = service.engine.heads.listing(name)
    except NoSuchHead as exc:
        raise NotFound(exc.message) from exc
    labels = list(entry.spec.labels) or list(entry.spec.output_keys)
    return HeadDetailOut(**head_out(entry).model_dump(exclude={"spec"}), spec=entry.spec, labels=labels,
                         model_info=entry.head.info if entry.head is not None else None)


@router.post("/api/faces", response_model=IndexOut, status_code=201, tags=["faces"])
async def api_index(request: Request, service: ServiceDep, settings: SettingsDep, file: Upload = None,
                    subject: Annotated[str | None, Form(max_length=256)] = None,
                    source: Annotated[str | None, Form(max_length=4096)] = None) -> IndexOut:
    """Index every face of one image. `file` of each face is `source` if given, else the upload's name."""
    started = time.perf_counter()
    data = await read_upload(file, settings.max_upload_bytes)
    name = source or (file.filename if file else None) or "upload"

    def work() -> IndexOut:
        image = service.decode(data)
        result = service.index([ImageToIndex(image=image, content_hash=content_hash(data), file=name,
                                             subject=subject or None)])[0]
        return IndexOut(file=result.file, ids=result.ids, faces=len(result.ids), replaced=len(result.replaced),
                        took_ms=round((time.perf_counter() - started) * 1e3, 2))

    out = await run_blocking(request, work)
    request.app.state.metrics.faces_indexed += out.faces
    return out


@router.delete("/api/faces/{face_id}", response_model=DeleteOut, tags=["faces"])
async def api_delete_face(request: Request, face_id: str, service: ServiceDep) -> DeleteOut:
    """Remove one face and its thumbnail."""
    await run_blocking(request, lambda: service.delete_face(face_id))
    return DeleteOut(deleted=[face_id])


@router.delete("/api/faces", response_model=DeleteOut, tags=["faces"])
async def api_delete_file(request: Request, service: ServiceDep,
                          file: Annotated[str, Query(min_length=1, description="source file of the faces")]
                          ) -> DeleteOut:
    """Remove every face of one source image."""
    return DeleteOut(deleted=await run_blocking(request, lambda: service.delete_file(file)))


@router.get("/health", response_model=HealthOut, tags=["ops"])
async def health(request: Request) -> JSONResponse:
    state = request.app.state
    service: FaceService | None = getattr(state, "service", None)
    store_ok = bool(service) and await run_in_threadpool(lambda: service.store.healthy() if service else False)
    checks = HealthChecks(model_loaded=service is not None, qdrant_healthy=store_ok,
                          shutdown_initiated=bool(getattr(state, "shutting_down", False)))
    ready = checks.model_loaded and checks.qdrant_healthy and not checks.shutdown_initiated
    body = HealthOut(status="healthy" if ready else "unhealthy", ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/status", response_model=StatusOut, tags=["ops"])
async def status(request: Request, service: ServiceDep) -> StatusOut:
    info = await run_blocking(request, service.store.info)
    engine = service.engine
    return StatusOut(collection=info.name, vectors=info.vectors, indexed_vectors=info.indexed, status=info.status,
                     model=engine.pack.name, model_fingerprint=engine.fingerprint, backend=info.backend.value,
                     providers=engine.providers, gpu_concurrency=engine.gate.concurrency,
                     inference_in_use=engine.gate.in_use, inference_waiting=engine.gate.waiting)


@router.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
async def metrics(request: Request, service: ServiceDep) -> str:
    """Prometheus text format."""
    m = request.app.state.metrics
    count = await run_in_threadpool(service.store.count)
    lines: list[tuple[str, str, Any]] = [
        ("oceano_search_requests_total", "counter", m.searches),
        ("oceano_search_faces_total", "counter", m.search_faces),
        ("oceano_search_seconds_sum", "counter", round(m.search_seconds, 6)),
        ("oceano_faces_indexed_total", "counter", m.faces_indexed),
        ("oceano_errors_total", "counter", m.errors),
        ("oceano_collection_vectors", "gauge", count),
        ("oceano_inference_in_use", "gauge", service.engine.gate.in_use),
        ("oceano_inference_waiting", "gauge", service.engine.gate.waiting),
    ]
    return "".join(f"# TYPE {n} {t}\n{n} {v}\n" for n, t, v in lines)
