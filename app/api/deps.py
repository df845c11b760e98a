"""Dependencies: services live on app.state (built in the lifespan by app.bootstrap) and are reached through
Annotated aliases; shared parameters. The upload path and blocking work are in app.api.upload."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, File, Query, Request, UploadFile

from app.access import KeyStore
from app.config import MAX_TOP_K, Settings
from app.ingest.manager import IngestJobs
from app.people import People
from app.service import FaceServiceApi


def get_service(request: Request) -> FaceServiceApi:
    service: FaceServiceApi = request.app.state.service
    return service


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_jobs(request: Request) -> IngestJobs:
    jobs: IngestJobs = request.app.state.jobs
    return jobs


def get_keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def get_people(request: Request) -> People:
    """People: in an HTTP worker (WORKERS > 1) the core's, each call crossing its socket (app.core.RemotePeople),
    so every call goes through run_blocking, never on the event loop."""
    people: People = request.app.state.people
    return people


ServiceDep = Annotated[FaceServiceApi, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[IngestJobs, Depends(get_jobs)]
KeysDep = Annotated[KeyStore, Depends(get_keys)]
PeopleDep = Annotated[People, Depends(get_people)]

TopK = Annotated[int | None, Query(ge=1, le=MAX_TOP_K, description="matches per face (default TOP_K)")]
Threshold = Annotated[float | None, Query(ge=-1.0, le=1.0, description="minimum cosine similarity")]
MinQuality = Annotated[
    float | None,
    Query(ge=0.0, le=1.0, description="match only stored faces whose quality score is at least this (0-1)"),
]
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
