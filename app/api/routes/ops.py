"""Operations routes: /health, /status, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from app.api.deps import ServiceDep, run_blocking
from app.api.schemas import HealthChecks, HealthOut, StatusOut
from app.service import FaceService
from app.store import CollectionInfo

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=HealthOut)
async def health(request: Request) -> JSONResponse:
    state = request.app.state
    service: FaceService | None = getattr(state, "service", None)
    store_ok = bool(service) and await run_in_threadpool(lambda: service.store.healthy() if service else False)
    info = await run_in_threadpool(_index_info, service) if service and store_ok else None
    checks = HealthChecks(model_loaded=service is not None, qdrant_healthy=store_ok,
                          shutdown_initiated=bool(getattr(state, "shutting_down", False)))
    ready = checks.model_loaded and checks.qdrant_healthy and not checks.shutdown_initiated
    body = HealthOut(status="healthy" if ready else "unhealthy", ready=ready, checks=checks,
                     index_building=bool(info and info.index_building), unindexed=info.unindexed if info else 0)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _index_info(service: FaceService) -> CollectionInfo | None:
    try:
        return service.store.info()
    except Exception:  # the store went away between the two calls: the next probe says so
        return None


@router.get("/status", response_model=StatusOut)
async def status(request: Request, service: ServiceDep) -> StatusOut:
    info = await run_blocking(request, service.store.info)
    engine = service.engine
    return StatusOut(collection=info.name, vectors=info.vectors, indexed_vectors=info.indexed, status=info.status,
                     model=engine.pack.name, model_fingerprint=engine.fingerprint, backend=info.backend.value,
                     providers=engine.providers, gpu_concurrency=engine.gate.concurrency,
                     inference_in_use=engine.gate.in_use, inference_waiting=engine.gate.waiting,
                     index_building=info.index_building, unindexed=info.unindexed)


@router.get("/metrics", response_class=PlainTextResponse)
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
