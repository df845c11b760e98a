"""Domain errors -> HTTP answers, in one table; validation errors; the body-size guard."""

from __future__ import annotations

import asyncio
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.pages import templates, wants_json
from app.api.upload import ClientGone
from app.errors import (
    AccessDenied,
    BadImage,
    ClientTooSlow,
    Conflict,
    EngineBusy,
    ImageTooLarge,
    IncompatibleState,
    InvalidRequest,
    NoSuchHead,
    NotAuthenticated,
    NotFound,
    OceanoError,
    RateLimited,
    RequestTimeout,
    ShuttingDown,
    StorageFull,
    StoreUnavailable,
    UnsupportedImage,
)

# Short codes of the router's own answers (unknown path, wrong method, unparsable body).
HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    429: "rate_limited",
}

# Domain error -> (status, short code). Only this layer knows about status codes.
ERROR_STATUS: dict[type[OceanoError], tuple[int, str]] = {
    BadImage: (400, "bad_image"),
    UnsupportedImage: (415, "unsupported_media_type"),
    ImageTooLarge: (413, "too_large"),
    InvalidRequest: (400, "invalid_request"),
    NoSuchHead: (400, "no_such_head"),
    NotFound: (404, "not_found"),
    EngineBusy: (503, "busy"),
    StoreUnavailable: (503, "store_unavailable"),
    ShuttingDown: (503, "shutting_down"),
    IncompatibleState: (503, "store_unavailable"),
    RequestTimeout: (504, "timeout"),
    ClientTooSlow: (408, "request_timeout"),
    StorageFull: (507, "insufficient_storage"),
    NotAuthenticated: (401, "unauthorized"),
    AccessDenied: (403, "forbidden"),
    Conflict: (409, "conflict"),
    RateLimited: (429, "rate_limited"),
}


def error_headers(exc: OceanoError) -> dict[str, str] | None:
    """Retry-After for busy and rate-limited answers, WWW-Authenticate for a missing or unknown key."""
    if isinstance(exc, EngineBusy | RateLimited):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, NotAuthenticated):
        return {"WWW-Authenticate": 'Bearer realm="oceano"'}
    return None


def error_response(exc: OceanoError) -> JSONResponse:
    """A domain error as JSON (also for the middlewares, which answer outside the exception handlers)."""
    status, code = ERROR_STATUS.get(type(exc), (500, "internal"))
    return JSONResponse({"detail": exc.message, "error": code}, status_code=status, headers=error_headers(exc))


class BodyLimit:
    """Refuse a request body over the upload limit: at once from its Content-Length, and, for a chunked body
    (no Content-Length), as soon as the bytes received pass the limit, instead of after spooling all of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return error_response(
            ImageTooLarge(f"request body is over the {self.max_bytes / 2**20:.0f} MB limit (MAX_UPLOAD_MB)")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        received = 0
        over = False

        async def counted_receive() -> Message:
            # Past the limit the app sees the body end there (its parser then fails on the truncated body, and
            # its answer is replaced by the 413 below): nothing more is read or spooled.
            nonlocal received, over
            if over:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            if not over:
                await send(message)

        await self.app(scope, counted_receive, guarded_send)
        if over:
            await self._too_large()(scope, receive, send)


class BodyDeadline:
    """The whole request body must arrive within `seconds` (BODY_TIMEOUT) of its head; else the answer is 408 and
    the connection is closed, whatever the app was doing with the partial body (it sees the client leave). Without
    it a body sent at a few bytes a second holds its connection, its task and its spooled part for good:
    REQUEST_TIMEOUT only starts once the body is in. Once the body is complete nothing is timed here."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        reading = True
        late = False

        async def timed_receive() -> Message:
            nonlocal reading, late
            if late:
                return {"type": "http.disconnect"}
            if not reading:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                late = True
                return {"type": "http.disconnect"}  # the app stops reading as if the client had left
            if message["type"] != "http.request" or not message.get("more_body", False):
                reading = False
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if not late:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not late:
                raise
        if late and not started:
            error = ClientTooSlow(
                f"the request body did not arrive within {self.seconds:g} s (BODY_TIMEOUT); send it faster or "
                "in smaller requests"
            )
            response = error_response(error)
            response.headers["Connection"] = "close"  # the rest of the body is never read: the connection ends
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OceanoError)
    async def domain_error(request: Request, exc: OceanoError) -> Response:
        status, code = ERROR_STATUS.get(type(exc), (500, "internal"))
        app.state.metrics.errors.labels(code).inc()
        headers = error_headers(exc)
        if request.url.path == "/search" and not wants_json(request):
            service = getattr(app.state, "service", None)
            return templates(request).TemplateResponse(
                request,
                "index.html",
                {"model": service.model_name if service else "", "faces": None, "error": exc.message},
                status_code=status,
                headers=headers,
            )
        return error_response(exc)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for 'client closed request'

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """The router's and the framework's own errors in the API's error body (ErrorOut)."""
        if exc.status_code < 400:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONResponse(
            {"detail": str(exc.detail), "error": HTTP_CODES.get(exc.status_code, "http_error")},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}", "error": "invalid_request"}, status_code=422)
