"""PathGuard: NUL characters in a request's path or query string are refused at the door."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import InvalidRequest

NUL = "\x00"


class PathGuard:
    """A NUL character in the path or the query string (sent as %00) is refused with 400 naming it, before any
    route sees it: no file, face id, head, key name or subject holds one, and the routes that reach the disk would
    fail on it (the OS refuses NUL in file names)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            query: bytes = scope.get("query_string", b"")
            where = "path" if NUL in scope["path"] else "query string" if b"%00" in query or b"\0" in query else None
            if where is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": f"NUL character in the {where}"})
                    return
                error = InvalidRequest(f"the request's {where} holds a NUL character (%00), which no name may hold")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
