"""Search routes: one photo, or several in one engine batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from app.api.contract import UPLOAD, errors
from app.api.deps import HeadsQuery, MinQuality, ServiceDep, Threshold, TopK, Upload
from app.api.schemas import BatchSearchItem, BatchSearchOut, SearchOut, face_out
from app.api.upload import handle_uploads
from app.engine import Ticket
from app.errors import InvalidRequest, OceanoError
from app.heads import Head
from app.service import FaceServiceApi, SearchedFace

router = APIRouter(tags=["search"])


def search_bytes(
    service: FaceServiceApi,
    data: bytes,
    top_k: int | None,
    threshold: float | None,
    heads: list[Head] | None = None,
    ticket: Ticket | None = None,
    min_quality: float | None = None,
) -> list[SearchedFace]:
    image = service.decode(data)
    return service.search(
        [image], top_k=top_k, threshold=threshold, heads=heads or [], ticket=ticket, min_quality=min_quality
    )[0]


@router.post("/api/search", response_model=SearchOut, responses=errors(*UPLOAD))
async def api_search(
    request: Request,
    service: ServiceDep,
    file: Upload = None,
    top_k: TopK = None,
    threshold: Threshold = None,
    heads: HeadsQuery = None,
    min_quality: MinQuality = None,
) -> SearchOut:
    """Find every face in the photo and its most similar stored faces; `heads` adds their answers per face;
    `min_quality` matches only stored faces of at least that quality score (faces indexed before quality
    scores existed have none and are left out)."""
    chosen = service.select_heads(heads or "")  # before the upload is read: a bad name costs nothing
    done = await handle_uploads(
        request,
        service,
        [file],
        lambda data, ticket: search_bytes(service, data[0], top_k, threshold, chosen, ticket, min_quality),
    )
    request.app.state.metrics.observe_search(len(done.value), done.seconds)
    return SearchOut(faces=[face_out(f) for f in done.value], took_ms=done.took_ms, model=service.model_name)


@router.post("/api/search/batch", response_model=BatchSearchOut, responses=errors(*UPLOAD))
async def api_search_batch(
    request: Request,
    service: ServiceDep,
    files: Annotated[list[UploadFile], File(description="several images")],
    top_k: TopK = None,
    threshold: Threshold = None,
    heads: HeadsQuery = None,
    min_quality: MinQuality = None,
) -> BatchSearchOut:
    """Search several photos in one call: all their faces go through the engine as one batch."""
    chosen = service.select_heads(heads or "")
    if not files or len(files) > 64:
        raise InvalidRequest("send between 1 and 64 files in the multipart field 'files'")

    def work(uploads: list[bytes], ticket: Ticket | None) -> list[BatchSearchItem]:
        decoded, items = [], []
        for f, data in zip(files, uploads, strict=True):
            try:
                decoded.append(service.decode(data))
                items.append(BatchSearchItem(filename=f.filename, faces=[]))
            except OceanoError as exc:  # one bad file must not fail the others
                items.append(BatchSearchItem(filename=f.filename, faces=[], error=exc.message))
        results = iter(
            service.search(
                decoded, top_k=top_k, threshold=threshold, heads=chosen, ticket=ticket, min_quality=min_quality
            )
        )
        for item in items:
            if item.error is None:
                item.faces = [face_out(f) for f in next(results)]
        return items

    done = await handle_uploads(request, service, files, work, whole_request_pixels=True)
    return BatchSearchOut(results=done.value, took_ms=done.took_ms, model=service.model_name)
