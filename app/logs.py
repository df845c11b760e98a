"""Log set-up for the service: plain text or one JSON object per line (LOG_FORMAT), each line carrying the id of
the request it was written for. The id lives in a context variable: set by the HTTP layer for each request, and
copied into the worker threads that run its blocking work (anyio's run_in_threadpool copies the context).

Every line goes through the handler's LogSafety filter first, whichever logger wrote it (uvicorn's included): secrets
are redacted (API keys in a query string, `X-API-Key` / `Authorization` values, anything shaped like a key), and in
text logs control characters are escaped, so that a client cannot forge a line (a `%0a` in a path)."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes a record may carry (logging's `extra=`), written as fields of the JSON line: the access log's.
REQUEST_FIELDS = ("method", "path", "status", "duration_ms", "key", "client")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


REDACTED = "[redacted]"
# What a secret looks like wherever it is written: a query parameter that carries a key or a token (uvicorn logs a
# WebSocket's path with its query string; the access log's own `key=NAME`, a key's name, is no query), a header's
# value, and any token shaped like an API key (app.access.keys: `oc_` and URL-safe base64), however it got there.
SECRETS = (
    re.compile(r"(?i)([?&;](?:key|api[_-]?key|token|access[_-]?token|auth|password|secret)=)[^&;#\s\"']+"),
    re.compile(r"(?i)((?:x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)[^\s\"',;]+"),
    re.compile(r"(oc_)[A-Za-z0-9_\-]{16,}"),
)
# Line breaks and every other control character (C0, DEL, C1, the Unicode line and paragraph separators).
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def redact(text: str) -> str:
    for pattern in SECRETS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def escape_controls(text: str) -> str:
    """`text` on one line, its control characters written as escapes (\\n, \\x00, \\u2028)."""
    return CONTROLS.sub(lambda m: ESCAPES.get(m.group(), m.group().encode("unicode_escape").decode("ascii")), text)


class LogSafety(logging.Filter):
    """Redacts secrets from each record's message (and, text only, escapes its control characters) before any
    formatter sees it; the formatters redact tracebacks themselves."""

    def __init__(self, escape: bool) -> None:
        super().__init__()
        self.escape = escape

    def filter(self, record: logging.LogRecord) -> bool:
        message = redact(record.getMessage())
        record.msg = escape_controls(message) if self.escape else message
        record.args = None
        return True


class TextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return redact(super().formatException(ei))


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request's id (in the thread that logs it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        record.request_id = rid
        record.request_tag = f" [{rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for name in REQUEST_FIELDS:
            if hasattr(record, name):
                value = getattr(record, name)
                out[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


def configure_logging(level: str, json_lines: bool = False) -> logging.Handler:
    """One handler on the root logger (stderr); uvicorn's loggers propagate to it (run uvicorn with
    log_config=None). Returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(LogSafety(escape=not json_lines))  # JSON escapes control characters itself
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
