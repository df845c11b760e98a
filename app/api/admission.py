"""Admission at the door: while the engine has more work ahead than a request may wait (GPU_ACQUIRE_TIMEOUT),
uploads are refused with 503 and Retry-After before their bodies are read. Handlers then take a ticket
(FaceService.admit) before decoding, which reserves their place in line."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.service import FaceServiceApi

# The routes that send images to the engine.
UPLOAD_ROUTES = frozenset({"/api/search", "/api/search/batch", "/api/analyze", "/api/faces", "/search"})


class AdmissionGuard:
    """`shed_delay`: seconds a refusal is held before it is sent (SHED_DELAY). Waiting costs an idle coroutine,
    not CPU; a client that sends again the moment it is refused would otherwise turn the spare CPU into thousands
    of refusals a second (measured: ~2,750 503/s from 200 such clients took the CPU the engine needed)."""

    def __init__(self, app: ASGIApp, shed_delay: float = 0.0) -> None:
        self.app = app
        self.shed_delay = shed_delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in UPLOAD_ROUTES:
            service: FaceServiceApi | None = getattr(scope["app"].state, "service", None)
            error = service.refusal_at_door() if service is not None else None
            if error is not None:
                if self.shed_delay:
                    await asyncio.sleep(self.shed_delay)
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
