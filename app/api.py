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
from pydantic import BaseModel

from app.deps import ServiceDep, SettingsDep
from app.errors import ImageTooLarge, InvalidRequest, OceanoError, RequestTimeout
from app.service import FaceService, ImageToIndex, SearchedFace, content_hash

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
    bbox: list[float]
    det_score: float
    kps: list[list[float]]
    matches: list[MatchOut]


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
    )


def search_bytes(service: FaceService, data: bytes, top_k: int | None,
                 threshold: float | None) -> list[SearchedFace]:
    image = service.decode(data)
    return service.search([image], top_k=top_k, threshold=threshold)[0]


TopK = Annotated[int | None, Query(ge=1, le=100, description="matches per face (default TOP_K)")]
Threshold = Annotated[float | None, Query(ge=-1.0, le=1.0, description="minimum cosine similarity")]
Upload = Annotated[UploadFile | None, File(description="an image: JPEG, PNG, WebP, BMP, TIFF or GIF")]


@router.post("/api/search", response_model=SearchOut, tags=["search"])
async def api_search(request: Request, service: ServiceDep, settings: SettingsDep, file: Upload = None,
                     top_k: TopK = None, threshold: Threshold = None) -> SearchOut:
    """Find every face in the photo and its most similar stored faces."""
    started = time.perf_counter()
    data = await read_upload(file, settings.max_upload_bytes)
    faces = await run_blocking(request, lambda: search_bytes(service, data, top_k, threshold))
    request.app.state.metrics.observe_search(len(faces), time.perf_counter() - started)
    return SearchOut(faces=[face_out(f) for f in faces], took_ms=round((time.perf_counter() - started) * 1e3, 2),
                     model=service.engine.pack.name)


@router.post("/api/search/batch", response_model=BatchSearchOut, tags=["search"])
async def api_search_batch(request: Request, service: ServiceDep, settings: SettingsDep,
                           files: Annotated[list[UploadFile], File(description="several images")],
                           top_k: TopK = None, threshold: Threshold = None) -> BatchSearchOut:
    """Search several photos in one call: all their faces go through the engine as one batch."""
    started = time.perf_counter()
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
        results = iter(service.search(decoded, top_k=top_k, threshold=threshold))
        for item in items:
            if item.error is None:
                item.faces = [face_out(f) for f in next(results)]
        return items

    items = await run_blocking(request, work)
    return BatchSearchOut(results=items, took_ms=round((time.perf_counter() - started) * 1e3, 2),
                          model=service.engine.pack.name)


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
