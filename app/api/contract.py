"""The error answers each operation documents, for its `responses=`: one schema for all of them (ErrorOut), one
description per status. Operations that will be protected by API keys and rate limits (all but /health) document
401, 403 and 429 as well, and every one 400 (a NUL in its path or query string is refused by app.api.paths).
The schema's 422 is ErrorOut too: FastAPI's own HTTPValidationError is never declared, because the validation
handler (app.api.errors) answers {"detail", "error"}."""

from __future__ import annotations

from typing import Any

from app.api.schemas import ErrorOut

RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}

DESCRIPTIONS = {
    400: "Invalid request: a missing or contradictory field, an unknown head, a corrupt, truncated or empty image, "
    "a NUL character in the path or query string",
    401: "No API key, or an unknown one",
    403: "The API key may not do this",
    404: "No such resource",
    409: "The name is taken",
    413: "Over MAX_UPLOAD_MB, MAX_MEGAPIXELS, or MAX_REQUEST_MEGAPIXELS for the images of one request",
    415: "Not an image of a supported format",
    422: "A parameter or field is missing, of the wrong type or out of range",
    429: "Too many requests for this API key; retry after Retry-After",
    503: "Busy (retry after Retry-After), shutting down, or the vector store is unavailable",
    504: "The request ran past REQUEST_TIMEOUT",
    507: "The disk is full (or under MIN_FREE_DISK_MB): nothing was written",
}

PROTECTED = (401, 403, 429)  # every operation but /health
ANY = (400,)  # every operation: PathGuard's answer to a NUL in the path or query
UPLOAD = (400, 413, 415, 422, 503, 504)  # operations that take an image


def errors(*statuses: int, protected: bool = True) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: ErrorOut under each status (and PROTECTED's, unless protected=False)."""
    chosen = sorted(set(statuses) | set(ANY) | (set(PROTECTED) if protected else set()))
    out: dict[int | str, dict[str, Any]] = {}
    for status in chosen:
        out[status] = {"model": ErrorOut, "description": DESCRIPTIONS[status]}
        if status in (429, 503):
            out[status]["headers"] = RETRY_AFTER
    return out


def or_html(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The same answers, each also as an HTML page (the search page's form target answers HTML unless the client
    asks for JSON), and 200 too."""
    html = {"text/html": {"schema": {"type": "string"}}}
    out = {status: {**answer, "content": html} for status, answer in responses.items()}
    out[200] = {"content": html, "description": "the results page, or SearchOut with Accept: application/json"}
    return out
