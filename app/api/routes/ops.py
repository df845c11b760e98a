"""Operations routes: /health, /status, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app.api.contract import errors
from app.api.deps import ServiceDep
from app.api.metrics import CONTENT_TYPE, Metrics
from app.api.schemas import HealthChecks, HealthOut, RuntimeOut, StatusOut
from app.api.upload import run_blocking
from app.calibration import CalibratedThreshold, ThresholdStore
from app.config import Settings
from app.people import People
from app.service import FaceServiceApi
from app.store import CollectionInfo

router = APIRouter(tags=["ops"])


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "not ready: the checks say which part is not"}},
)
async def health(request: Request) -> JSONResponse:
    state = request.app.state
    service: FaceServiceApi | None = getattr(state, "service", None)
    store_ok = bool(service) and await run_in_threadpool(lambda: service.store_healthy() if service else False)
    info = await run_in_threadpool(_index_info, service) if service and store_ok else None
    checks = HealthChecks(
        model_loaded=service is not None,
        qdrant_healthy=store_ok,
        shutdown_initiated=bool(getattr(state, "shutting_down", False)),
    )
    ready = checks.model_loaded and checks.qdrant_healthy and not checks.shutdown_initiated
    body = HealthOut(
        status="healthy" if ready else "unhealthy",
        ready=ready,
        checks=checks,
        index_building=bool(info and info.index_building),
        unindexed=info.unindexed if info else 0,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _index_info(service: FaceServiceApi) -> CollectionInfo | None:
    try:
        return service.collection_info()
    except Exception:  # the store went away between the two calls: the next probe says so
        return None


@router.get("/status", response_model=StatusOut, responses=errors(503, 504))
async def status(request: Request, service: ServiceDep) -> StatusOut:
    info = await run_blocking(request, service.collection_info)
    engine = await run_blocking(request, service.engine_status)
    people: People | None = getattr(request.app.state, "people", None)
    settings: Settings = request.app.state.settings
    threshold = (
        await run_blocking(request, people.threshold)  # WORKERS > 1: a call to the core
        if people is not None
        else ThresholdStore(settings.state_dir).in_force(info.name, service.fingerprint, service.model_name)
    )
    return StatusOut(
        **StatusOut.fields_of(info),
        model=service.model_name,
        model_fingerprint=service.fingerprint,
        providers=engine.providers,
        runtime=RuntimeOut(**await run_blocking(request, service.runtime_info)),
        gpu_concurrency=engine.concurrency,
        inference_in_use=engine.in_use,
        inference_waiting=engine.waiting,
        threshold=threshold.threshold,
        threshold_source=threshold_source(threshold),
    )


def threshold_source(value: CalibratedThreshold) -> str:
    return value.source if value.source.startswith("default") else f"calibrated: {value.source}"


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format (the metrics are listed in the README)",
        },
        **errors(),  # a read: AUTH_READS=key asks for a search key (never rate-limited: no 429 in practice)
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text format. Collected in a thread: the collection size and the ingest counts are read from the
    store and the ingest state at each scrape."""
    registry: Metrics = request.app.state.metrics
    return Response(await run_in_threadpool(registry.render), media_type=CONTENT_TYPE)
