"""create_app(settings): the lifespan builds the services on app.state, mounts routers, maps domain errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__, api, jobs_api, web
from app.batcher import InferenceBatcher
from app.config import Settings
from app.engine import FaceEngine
from app.errors import (
    BadImage,
    EngineBusy,
    ImageTooLarge,
    InvalidRequest,
    NoSuchHead,
    NotFound,
    OceanoError,
    RequestTimeout,
    StoreUnavailable,
    UnsupportedImage,
)
from app.jobs import STATE_FILE, IngestState, JobManager
from app.runtime import InferenceGate
from app.service import FaceService
from app.store import open_store
from app.thumbs import ThumbnailStore

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent

# Domain error -> (status, short code). Only this layer knows about status codes.
ERROR_STATUS: dict[type[OceanoError], tuple[int, str]] = {
    BadImage: (400, "bad_image"),
    UnsupportedImage: (415, "unsupported_media_type"),
    ImageTooLarge: (413, "too_large"),
    InvalidRequest: (400, "invalid_request"),
    NoSuchHead: (400, "no_such_head"),
    NotFound: (404, "not_found"),
    EngineBusy: (503, "busy"),
    StoreUnavailable: (503, "store_unavailable"),
    RequestTimeout: (504, "timeout"),
}


@dataclass
class Metrics:
    searches: int = 0
    search_faces: int = 0
    search_seconds: float = 0.0
    faces_indexed: int = 0
    errors: int = 0

    def observe_search(self, faces: int, seconds: float) -> None:
        self.searches += 1
        self.search_faces += faces
        self.search_seconds += seconds


class BodyLimit:
    """Refuse a request whose declared body is over the upload limit before reading any of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                response = JSONResponse({"detail": f"request body is over the {self.max_bytes / 2**20:.0f} MB "
                                                   "limit (MAX_UPLOAD_MB)", "error": "too_large"}, status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_services(app: FastAPI, settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    gate = InferenceGate(settings.gpu_concurrency, settings.gpu_acquire_timeout)
    engine = FaceEngine.from_settings(settings, gate)
    store = open_store(settings, dim=engine.dim, pack=engine.fingerprint)
    if store.info().status != "green":
        store.optimize()  # before serving: the index build blocks the process (see EdgeStore)
    app.state.service = FaceService(settings=settings, engine=engine, store=store,
                                    thumbs=ThumbnailStore(settings.thumbs_dir))
    app.state.service.batcher = InferenceBatcher(engine, max_images=settings.request_batch)
    app.state.jobs = JobManager(service=app.state.service, state=IngestState(settings.state_dir / STATE_FILE),
                                settings=settings)
    app.state.jobs.start()  # resumes the jobs a previous run of the service left unfinished


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.shutting_down = False
        try:
            build_services(app, settings)
        except OceanoError as exc:
            logger.critical("Oceano cannot start: %s", exc.message)
            raise
        logger.info("Oceano ready: collection %s, backend %s", settings.collection_name,
                    app.state.service.store.backend.value)
        try:
            yield
        finally:
            app.state.shutting_down = True
            service: FaceService = app.state.service
            jobs: JobManager = app.state.jobs
            jobs.shutdown()  # before the store closes: the running job commits its batch, resumes next start
            jobs.state.close()
            if service.batcher is not None:
                service.batcher.close()
            service.store.close()
            logger.info("Oceano stopped: store flushed and closed")

    app = FastAPI(title="Oceano", version=__version__, lifespan=lifespan,
                  description="Self-hosted face search: upload a photo, find similar faces.")
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.templates = Jinja2Templates(directory=str(ROOT / "templates"))
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")
    app.include_router(web.router)
    app.include_router(api.router)
    app.include_router(jobs_api.router)
    # A multipart envelope adds a little around the file itself.
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + 1024 * 1024)

    @app.exception_handler(OceanoError)
    async def domain_error(request: Request, exc: OceanoError) -> Response:
        status, code = ERROR_STATUS.get(type(exc), (500, "internal"))
        app.state.metrics.errors += 1
        headers = {"Retry-After": str(int(exc.retry_after))} if isinstance(exc, EngineBusy) else None
        if request.url.path == "/search" and not web.wants_json(request):
            service = getattr(app.state, "service", None)
            return app.state.templates.TemplateResponse(
                request, "index.html", {"model": service.engine.pack.name if service else "", "faces": None,
                                        "error": exc.message}, status_code=status, headers=headers)
        return JSONResponse({"detail": exc.message, "error": code}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}", "error": "invalid_request"},
                            status_code=422)

    return app
