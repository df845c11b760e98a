"""GET /live: the live camera page. It streams the browser camera (or a chosen video file) over /ws, one frame
at a time (the next as soon as the answer arrives), and draws the answers (static/live.js)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.api.deps import ServiceDep, SettingsDep
from app.api.pages import templates

router = APIRouter()


@router.get("/live", response_class=HTMLResponse, include_in_schema=False)
async def live(request: Request, service: ServiceDep, settings: SettingsDep) -> Response:
    return templates(request).TemplateResponse(
        request,
        "live.html",
        {
            "model": service.model_name,
            "heads": [h.name for h in service.select_heads(None)],
            "crowd_threshold": settings.crowd_threshold,
        },
    )
