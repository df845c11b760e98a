"""HTML pages: / and /search. The page works without JavaScript (plain form POST)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from app.api.contract import UPLOAD, errors, or_html
from app.api.deps import MinQuality, ServiceDep, SettingsDep, Threshold, TopK, Upload
from app.api.routes.ops import threshold_source
from app.api.routes.search import search_bytes
from app.api.schemas import SearchOut, face_out
from app.api.upload import handle_uploads, run_blocking
from app.config import ReadAccess
from app.heads import Head, OutputKind
from app.people import People

router = APIRouter()


async def threshold_view(request: Request) -> dict[str, Any]:
    """The 'same person' threshold in force, for the results page (WORKERS > 1: a call to the core)."""
    people: People | None = getattr(request.app.state, "people", None)
    if people is None:
        return {"threshold": None, "threshold_source": ""}
    value = await run_blocking(request, people.threshold)
    return {"threshold": value.threshold, "threshold_source": threshold_source(value)}


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def templates(request: Request) -> Jinja2Templates:
    t: Jinja2Templates = request.app.state.templates
    return t


def head_summary(head: Head, attributes: dict[str, Any]) -> str | None:
    """A short text of a head's answer for the page, e.g. 'happy 0.98' or 'F, 31'."""
    spec = head.spec
    if spec.output is OutputKind.GENDERAGE:
        return f"{attributes['gender']}, {attributes['age']}" if "age" in attributes else None
    value = attributes.get(spec.name)
    if value is None:
        return None
    if spec.output is OutputKind.SOFTMAX:
        return f"{value['label']} {value['scores'][value['label']]:.2f}"
    if isinstance(value, dict):
        return f"{spec.name}: " + ", ".join(f"{k} {v:.3g}" for k, v in value.items())
    return f"{spec.name}: {value:.3g}"


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request, service: ServiceDep, settings: SettingsDep) -> Response:
    """The page; with AUTH_READS=key it asks for a key once (kept in the browser's session) and sends it."""
    return templates(request).TemplateResponse(
        request,
        "index.html",
        {
            "model": service.model_name,
            "faces": None,
            "error": None,
            "key_needed": settings.auth_reads is ReadAccess.KEY,
        },
    )


@router.post("/search", tags=["search"], response_model=SearchOut, responses=or_html(errors(*UPLOAD)))
async def search_page(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    file: Upload = None,
    top_k: TopK = None,
    threshold: Threshold = None,
    min_quality: MinQuality = None,
) -> Response:
    """The page's form target: HTML results, or JSON with `Accept: application/json`. The default heads (HEADS,
    e.g. emotion) run on each face and are shown next to its matches."""
    heads = service.select_heads(None)
    done = await handle_uploads(
        request,
        service,
        [file],
        lambda data, ticket: search_bytes(service, data[0], top_k, threshold, heads, ticket, min_quality),
    )
    faces, took = done.value, done.took_ms
    request.app.state.metrics.observe_search(len(faces), done.seconds)
    if wants_json(request):
        body = SearchOut(faces=[face_out(f) for f in faces], took_ms=took, model=service.model_name)
        return JSONResponse(body.model_dump())
    crops = await run_blocking(request, lambda: [f.thumbnail(settings.thumb_size) for f in faces])
    view = [
        {
            "out": face_out(f),
            "crop": base64.b64encode(crop).decode(),
            "tags": [t for h in heads if (t := head_summary(h, f.face.attributes))],
        }
        for f, crop in zip(faces, crops, strict=True)
    ]
    return templates(request).TemplateResponse(
        request,
        "index.html",
        {
            "model": service.model_name,
            "faces": view,
            "error": None,
            "took_ms": took,
            "filename": file.filename if file else None,
            **(await threshold_view(request)),
        },
    )
