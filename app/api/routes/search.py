"""Search routes: one photo, or several in one engine batch."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from app.api.contract import UPLOAD, errors
from app.api.deps import HeadsQuery, ServiceDep, SettingsDep, Threshold, TopK, Upload, read_upload, run_blocking
from app.api.schemas import BatchSearchItem, BatchSearchOut, SearchOut, face_out
from app.engine import Ticket
from app.errors import InvalidRequest, OceanoError
from app.heads import Head
from app.service import FaceService, SearchedFace

router = APIRouter(tags=["search"])


def search_bytes(
    service: FaceService,
    data: bytes,
    top_k: int | None,
    threshold: float | None,
    heads: list[Head] | None = None,
    ticket: Ticket | None = None,
) -> list[SearchedFace]:
    image = service.decode(data)
    return service.search([image], top_k=top_k, threshold=threshold, heads=heads or [], ticket=ticket)[0]


@router.post("/api/search", response_model=SearchOut, responses=errors(*UPLOAD))
async def api_search(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    file: Upload = None,
    top_k: TopK = None,
    threshold: Threshold = None,
    heads: HeadsQuery = None,
) -> SearchOut:
    """Find every face in the photo and its most similar stored faces; `heads` adds their answers per face."""
    started = time.perf_counter()
    chosen = service.select_heads(heads or "")  # before the upload is read: a bad name costs nothing
    data = await read_upload(file, settings.max_upload_bytes)
    ticket = service.admit(1)  # before decoding: a busy engine answers 503 at once
    faces = await run_blocking(request, lambda: search_bytes(service, data, top_k, threshold, chosen, ticket), ticket)
    request.app.state.metrics.observe_search(len(faces), time.perf_counter() - started)
    return SearchOut(
        faces=[face_out(f) for f in faces],
        took_ms=round((time.perf_counter() - started) * 1e3, 2),
        model=service.engine.pack.name,
    )


@router.post("/api/search/batch", response_model=BatchSearchOut, responses=errors(*UPLOAD))
async def api_search_batch(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="several images")],
    top_k: TopK = None,
    threshold: Threshold = None,
    heads: HeadsQuery = None,
) -> BatchSearchOut:
    """Search several photos in one call: all their faces go through the engine as one batch."""
    started = time.perf_counter()
    chosen = service.select_heads(heads or "")
    if not files or len(files) > 64:
        raise InvalidRequest("send between 1 and 64 files in the multipart field 'files'")
    blobs = [(f.filename, await read_upload(f, settings.max_upload_bytes)) for f in files]
    service.check_request_pixels([data for _, data in blobs])  # before decoding: 413 for the whole request
    ticket = service.admit(len(files))  # before decoding: a busy engine answers 503 at once

    def work() -> list[BatchSearchItem]:
        decoded, items = [], []
        for name, data in blobs:
            try:
                decoded.append(service.decode(data))
                items.append(BatchSearchItem(filename=name, faces=[]))
            except OceanoError as exc:  # one bad file must not fail the others
                items.append(BatchSearchItem(filename=name, faces=[], error=exc.message))
        results = iter(service.search(decoded, top_k=top_k, threshold=threshold, heads=chosen, ticket=ticket))
        for item in items:
            if item.error is None:
                item.faces = [face_out(f) for f in next(results)]
        return items

    items = await run_blocking(request, work, ticket)
    return BatchSearchOut(
        results=items, took_ms=round((time.perf_counter() - started) * 1e3, 2), model=service.engine.pack.name
    )
