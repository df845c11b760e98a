"""python -m app: start uvicorn with one worker (throughput comes from batching, not processes)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from app.api import create_app
from app.api.metrics import Metrics
from app.api.server import ConnectionGuard
from app.config import LogFormat, Settings, private_files
from app.logs import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Run the Oceano face-search service (settings come from the "
        "environment: HOST, PORT, QDRANT_URL, MODEL_NAME, ... see README).",
    )
    parser.add_argument("--host", help="override HOST")
    parser.add_argument("--port", type=int, help="override PORT")
    args = parser.parse_args(argv)
    private_files()  # before anything is opened: crops, segments and state files 0600, folders 0700
    settings = Settings()
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    configure_logging(settings.log_level, json_lines=settings.log_format is LogFormat.JSON)
    logging.getLogger("uvicorn.access").disabled = True  # app.access logs each request, with its id and key
    # The app reads forwarded headers itself (FORWARDED_ALLOW_IPS, app.api.context): uvicorn's own reading off.
    app = create_app(settings)
    metrics: Metrics = app.state.metrics
    guard = ConnectionGuard.from_settings(settings, on_refused=metrics.connection_refused)
    uvicorn.run(
        app,
        http=guard.protocol(),  # HEADER_TIMEOUT and MAX_CLIENT_CONNECTIONS (app.api.server)
        host=settings.host,
        port=settings.port,
        workers=1,
        limit_concurrency=settings.uvicorn_limit_concurrency,
        backlog=settings.uvicorn_backlog,
        timeout_graceful_shutdown=int(settings.request_timeout),
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        proxy_headers=False,
        # WebSocket messages: at most WS_MAX_MESSAGE_BYTES, not compressed (a deflated message of a few KB
        # would inflate to the limit in memory; base64 frames gain little from deflate anyway).
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
