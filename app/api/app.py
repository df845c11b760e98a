"""create_app(settings): the lifespan opens the services (app.bootstrap) on app.state, routers are mounted,
domain errors are mapped to status codes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app import __version__
from app.api import live, pages, ws
from app.api.admission import AdmissionGuard
from app.api.auth import AccessGuard
from app.api.context import RequestContext
from app.api.errors import BodyDeadline, BodyLimit, install_error_handlers
from app.api.metrics import Metrics, RequestMetrics
from app.api.paths import PathGuard
from app.api.routes import clusters, faces, feedback, heads, jobs, keys, ops, search, subjects
from app.api.routing import MethodGuard
from app.api.server import ConnectionGuard, WorkerHttpProtocol
from app.api.ws_auth import WaitingRoom
from app.bootstrap import Services, open_services
from app.config import LogFormat, Settings
from app.core import CoreAddress, CoreClient, RemoteRateLimiter, SharedPeerCounts, WorkerServices, connect_core
from app.errors import OceanoError
from app.logs import configure_logging
from app.realtime import RealtimeStats

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent.parent


def create_app(settings: Settings | None = None, *, core: CoreAddress | None = None) -> FastAPI:
    """The app of one process that opens everything (app.bootstrap); with `core`, the app of an HTTP worker
    process whose service, jobs and rate limits are the core process's (WORKERS > 1, app.core)."""
    settings = settings or Settings()
    client = CoreClient(core) if core is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.shutting_down = False
        services: Services | WorkerServices
        try:
            if client is not None:
                services = await run_in_threadpool(connect_core, settings, client)
            else:
                services = open_services(settings, observer=metrics)
        except OceanoError as exc:
            logger.critical("Oceano cannot start: %s", exc.message)
            raise
        app.state.services = services
        app.state.service = services.service
        app.state.jobs = services.jobs
        metrics.service, metrics.jobs, metrics.backend = services.service, services.jobs, services.backend
        app.state.keys = services.keys
        app.state.people = services.people  # in an HTTP worker (WORKERS > 1): the core's, over its socket
        if client is None:
            logger.info("Oceano ready: collection %s, backend %s", settings.collection_name, services.backend)
        try:
            yield
        finally:
            app.state.shutting_down = True
            stopping: Services | WorkerServices = app.state.services
            stopping.close()
            if client is None:
                logger.info("Oceano stopped: store flushed and closed")

    app = FastAPI(
        title="Oceano",
        version=__version__,
        lifespan=lifespan,
        description="Self-hosted face search: upload a photo, find similar faces.",
    )
    app.state.settings = settings
    app.state.metrics = metrics = Metrics()
    app.state.realtime_stats = metrics.realtime = RealtimeStats()  # /ws counters: /api/stats and /metrics
    app.state.ws_waiting_room = WaitingRoom(settings.ws_auth_pending)  # sockets waiting for their key message
    app.state.templates = Jinja2Templates(directory=str(ROOT / "templates"))
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")
    app.include_router(pages.router)
    app.include_router(subjects.router)  # before faces: GET /api/faces and /api/faces/{id}/subject live there
    app.include_router(faces.router)
    app.include_router(feedback.router)
    app.include_router(search.router)
    app.include_router(heads.router)
    app.include_router(ops.router)
    app.include_router(jobs.router)
    app.include_router(clusters.router)
    app.include_router(keys.router)
    app.include_router(ws.router)
    app.include_router(live.router)
    # A multipart envelope adds a little around the file itself.
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + 1024 * 1024)
    # a busy engine refuses uploads before anything is read (refusals held SHED_DELAY)
    app.add_middleware(AdmissionGuard, shed_delay=settings.shed_delay)
    # keys, scopes, rate limits (counted by the core for all workers): before admission and bodies
    app.add_middleware(AccessGuard, settings=settings, limiter=RemoteRateLimiter(client) if client else None)
    app.add_middleware(MethodGuard)  # OPTIONS and wrong methods answered with Allow (no key needed to ask)
    if settings.cors_origin_list:  # outside both: a preflight is answered before keys or methods are checked
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            max_age=600,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            expose_headers=["Retry-After", "X-Request-ID"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept", "X-Request-ID"],
        )
    app.add_middleware(PathGuard)  # a NUL in the path or query: 400 before keys, methods or routes
    app.add_middleware(BodyDeadline, seconds=settings.body_timeout)  # outside the others: its 408 replaces theirs
    app.add_middleware(RequestMetrics, metrics=metrics)  # every answer is counted
    app.add_middleware(RequestContext, proxies=settings.forwarded_networks)  # outermost: client, request id, log
    install_error_handlers(app)
    return app


def worker_app() -> FastAPI:
    """The app of one HTTP worker process, as uvicorn starts it (a factory: settings from the environment, the
    core's address from the variables the core set, app.core.wire)."""
    settings = Settings()
    configure_logging(settings.log_level, json_lines=settings.log_format is LogFormat.JSON)
    logging.getLogger("uvicorn.access").disabled = True
    core = CoreAddress.from_env()
    if core is None:
        raise RuntimeError("worker_app runs in the HTTP workers the core process starts (python -m app, WORKERS > 1)")
    app = create_app(settings, core=core)
    metrics: Metrics = app.state.metrics
    # uvicorn imported the protocol class before calling this factory; it serves no connection before we return.
    # MAX_CLIENT_CONNECTIONS is counted in the table every worker shares (made by the core before it started them).
    peers = SharedPeerCounts(core.connections)
    peers.claim()
    WorkerHttpProtocol.guard = ConnectionGuard.from_settings(
        settings, on_refused=metrics.connection_refused, counts=peers
    )
    return app
