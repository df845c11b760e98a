"""Dependencies and request plumbing: services live on app.state (built in the lifespan by app.bootstrap) and
are reached through Annotated aliases; shared parameters; uploads; blocking work in the thread pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.access import KeyStore
from app.config import MAX_TOP_K, Settings
from app.engine import Ticket
from app.errors import ImageTooLarge, InvalidRequest, RequestTimeout
from app.ingest.manager import JobManager
from app.people import People
from app.service import FaceService

T = TypeVar("T")


def get_service(request: Request) -> FaceService:
    service: FaceService = request.app.state.service
    return service


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_jobs(request: Request) -> JobManager:
    jobs: JobManager = request.app.state.jobs
    return jobs


def get_keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def get_people(request: Request) -> People:
    people: People = request.app.state.people
    return people


ServiceDep = Annotated[FaceService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]
PeopleDep = Annotated[People, Depends(get_people)]

TopK = Annotated[int | None, Query(ge=1, le=MAX_TOP_K, description="matches per face (default TOP_K)")]
Threshold = Annotated[float | None, Query(ge=-1.0, le=1.0, description="minimum cosine similarity")]
Upload = Annotated[UploadFile | None, File(description="an image: JPEG, PNG, WebP, BMP, TIFF or GIF")]
HeadsQuery = Annotated[
    str | None,
    Query(
        max_length=512,
        description="comma-separated classifier heads to run "
        "on each face, e.g. emotion,genderage "
        "(GET /api/heads lists them)",
    ),
]


class ClientGone(Exception):
    """The client closed the connection before its answer was ready (nothing to answer)."""


DISCONNECT_POLL = 0.25  # seconds between checks that the client is still there


async def run_blocking(request: Request, fn: Callable[[], T], ticket: Ticket | None = None) -> T:
    """Thread pool + REQUEST_TIMEOUT; the event loop never waits on decode or ONNX. A request whose client left,
    or that ran past REQUEST_TIMEOUT, has its ticket cancelled: the batcher drops it before inference."""
    timeout = request.app.state.settings.request_timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    task = asyncio.ensure_future(run_in_threadpool(fn))
    # A request given up below leaves its thread to finish alone: its outcome is read here, not logged by
    # asyncio as "Task exception was never retrieved" (hundreds of tracebacks in a soak).
    task.add_done_callback(lambda done: None if done.cancelled() else done.exception())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(DISCONNECT_POLL, max(0.0, deadline - loop.time())))
            if done:
                return task.result()
            if loop.time() >= deadline:
                if ticket is not None:
                    ticket.cancel()
                raise RequestTimeout(f"request took longer than REQUEST_TIMEOUT={timeout:.0f}s")
            if await request.is_disconnected():
                if ticket is not None:
                    ticket.cancel()
                raise ClientGone()
    finally:
        if ticket is not None:
            ticket.release()


async def read_upload(file: UploadFile | None, max_bytes: int) -> bytes:
    if file is None:
        raise InvalidRequest("multipart field 'file' is required (an image upload)")
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"upload is over the {max_bytes / 2**20:.0f} MB limit (MAX_UPLOAD_MB)")
    return data
