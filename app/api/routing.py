"""What the routes look like from outside the router: the route template a path belongs to (a bounded label for
metrics), the methods a path takes, and the middleware that answers OPTIONS and wrong methods with `Allow`."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

UNMATCHED = "unmatched"  # the route label of a path no route has (404s, scanners): one label for all of them


@dataclass(frozen=True, slots=True)
class _Entry:
    regex: re.Pattern[str]
    template: str  # e.g. /api/faces/{face_id}
    methods: frozenset[str] | None  # None: a mount or a WebSocket route, which answers methods itself


def _routes(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    """Every route, those of included routers too (newer FastAPI keeps them nested; older ones flatten them)."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    yield from (contexts(routes) if contexts is not None else routes)


class RouteTable:
    """The app's routes as (regex, template, methods), read once from the app, after every route is added."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._entries: list[_Entry] = []
        for route in _routes(routes):
            regex, template = getattr(route, "path_regex", None), getattr(route, "path_format", None)
            if regex is None or template is None:
                continue
            methods = getattr(route, "methods", None)
            self._entries.append(_Entry(regex, template, frozenset(methods) if methods else None))

    @classmethod
    def of(cls, app: Any) -> RouteTable:
        table: RouteTable | None = getattr(app.state, "route_table", None)
        if table is None:
            table = app.state.route_table = cls(app.routes)
        return table

    def template(self, path: str) -> str:
        """The template of the route that serves `path` (the first that matches, as the router picks), or
        UNMATCHED."""
        return next((e.template for e in self._entries if e.regex.match(path)), UNMATCHED)

    def allowed(self, path: str) -> frozenset[str] | None:
        """The methods the routes of `path` take together (e.g. POST and DELETE on /api/faces); None when no route
        with methods has this path (unknown paths, mounts)."""
        methods = [e.methods for e in self._entries if e.methods is not None and e.regex.match(path)]
        return frozenset().union(*methods) if methods else None


def route_path(scope: Scope) -> str:
    """The path the router matches: scope["path"] without the root path the app is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class MethodGuard:
    """OPTIONS on a known path: 204 with `Allow` (the methods of every route of that path, and OPTIONS). Any other
    method the path does not take: 405 with the same `Allow` and the API's error body. The router alone would
    answer OPTIONS with 405, and list only the methods of the first route it tried. Goes inside CORS, which
    answers preflight requests itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            methods = RouteTable.of(scope["app"]).allowed(path)
            method = scope["method"]
            if methods is not None and method not in methods:
                allow = ", ".join(sorted(methods | {"OPTIONS"}))
                response: Response
                if method == "OPTIONS":
                    response = Response(status_code=204, headers={"Allow": allow})
                else:
                    response = JSONResponse(
                        {
                            "detail": f"{method} is not allowed on {path} (allowed: {allow})",
                            "error": "method_not_allowed",
                        },
                        status_code=405,
                        headers={"Allow": allow},
                    )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
