"""HTML pages (/ and /search) and /thumbs. The page works without JavaScript (plain form POST)."""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from app.api import SearchOut, Threshold, TopK, Upload, face_out, read_upload, run_blocking, search_bytes
from app.deps import ServiceDep, SettingsDep

router = APIRouter()


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def templates(request: Request) -> Jinja2Templates:
    t: Jinja2Templates = request.app.state.templates
    return t


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request, service: ServiceDep) -> Response:
    return templates(request).TemplateResponse(request, "index.html", {"model": service.engine.pack.name,
                                                                      "faces": None, "error": None})


@router.post("/search", tags=["search"], response_model=SearchOut)
async def search_page(request: Request, service: ServiceDep, settings: SettingsDep, file: Upload = None,
                      top_k: TopK = None, threshold: Threshold = None) -> Response:
    """The page's form target: HTML results, or JSON with `Accept: application/json`. The default heads (HEADS,
    e.g. emotion) run on each face and are shown next to its matches."""
    started = time.perf_counter()
    heads = service.select_heads(None)
    data = await read_upload(file, settings.max_upload_bytes)
    faces = await run_blocking(request, lambda: search_bytes(service, data, top_k, threshold, heads))
    took = round((time.perf_counter() - started) * 1e3, 2)
    request.app.state.metrics.observe_search(len(faces), took / 1e3)
    if wants_json(request):
        body = SearchOut(faces=[face_out(f) for f in faces], took_ms=took, model=service.engine.pack.name)
        return JSONResponse(body.model_dump())
    crops = await run_blocking(request, lambda: [f.thumbnail(settings.thumb_size) for f in faces])
    view = [{"out": face_out(f), "crop": base64.b64encode(crop).decode(),
             "tags": [t for h in heads if (t := h.summary(f.face.attributes))]}
            for f, crop in zip(faces, crops, strict=True)]
    return templates(request).TemplateResponse(request, "index.html", {
        "model": service.engine.pack.name, "faces": view, "error": None, "took_ms": took,
        "filename": file.filename if file else None})


@router.get("/thumbs/{face_id}", include_in_schema=True, tags=["faces"])
async def thumbnail(face_id: str, service: ServiceDep) -> FileResponse:
    """The JPEG crop of a stored face (ids are UUIDs; anything else is 404)."""
    path = service.thumbs.existing(face_id)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
