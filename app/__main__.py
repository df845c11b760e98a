"""python -m app: start the service. WORKERS=1 (the default): uvicorn with one worker, the engine in the same
process (throughput comes from batching). WORKERS > 1: this process becomes the core (engine, request batcher,
store, ingest jobs: app.core) and starts that many HTTP worker processes around it; it restarts a worker that
dies, and SIGTERM or SIGINT stops the workers first, then the core."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.api import create_app
from app.api.metrics import Metrics, share_across_processes
from app.api.server import ConnectionGuard
from app.bootstrap import open_services
from app.config import LogFormat, Settings, private_files
from app.core import CoreAddress, CoreServer
from app.engine import select_providers
from app.errors import OceanoError
from app.logs import configure_logging

logger = logging.getLogger(__name__)

MAX_SOCKET_PATH = 100  # a Unix socket's path has ~108 bytes; a longer STATE_DIR puts it in the temp folder


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The same for one process and for each HTTP worker. The app reads forwarded headers itself
    (FORWARDED_ALLOW_IPS, app.api.context): uvicorn's own reading off."""
    return {
        "host": settings.host,
        "port": settings.port,
        "limit_concurrency": settings.uvicorn_limit_concurrency,
        "backlog": settings.uvicorn_backlog,
        "timeout_graceful_shutdown": int(settings.request_timeout),
        "log_level": settings.log_level.lower(),
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        # WebSocket messages: at most WS_MAX_MESSAGE_BYTES, not compressed (a deflated message of a few KB
        # would inflate to the limit in memory; base64 frames gain little from deflate anyway).
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_per_message_deflate": False,
    }


def core_address(settings: Settings) -> CoreAddress:
    address = CoreAddress.in_state_dir(settings.state_dir.resolve())
    if len(str(address.socket)) > MAX_SOCKET_PATH:
        short = Path(tempfile.gettempdir()) / f"oceano-core-{os.getpid()}.sock"
        address = CoreAddress(short, address.authkey, address.estimate, address.connections)
    return address


def serve_with_workers(settings: Settings, workers: int) -> None:
    """The core here, `workers` HTTP workers (uvicorn's supervisor: it restarts a worker that dies, and on
    SIGTERM / SIGINT stops them all) around it; the core closes after the last worker stopped."""
    metrics_dir = Path(tempfile.mkdtemp(prefix="oceano-metrics-"))
    share_across_processes(metrics_dir)  # before any metric exists: the engine's are recorded here, in the core
    try:
        services = open_services(settings, observer=Metrics())
    except OceanoError as exc:
        logger.critical("Oceano cannot start: %s", exc.message)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        raise SystemExit(1) from exc
    server = CoreServer(services, core_address(settings))
    try:
        server.start()
        server.address.export()  # the workers find the core through their environment
        config = uvicorn.Config(
            "app.api:worker_app",
            factory=True,
            workers=workers,
            http="app.api.server:WorkerHttpProtocol",  # HEADER_TIMEOUT, MAX_CLIENT_CONNECTIONS across the workers
            **uvicorn_options(settings),
        )
        logger.info(
            "Oceano ready: core process %d, %d HTTP workers on %s:%d, collection %s, backend %s",
            os.getpid(),
            workers,
            settings.host,
            settings.port,
            settings.collection_name,
            services.backend,
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        server.close()
        services.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        logger.info("Oceano stopped: HTTP workers ended, store flushed and closed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Run the Oceano face-search service (settings come from the "
        "environment: HOST, PORT, QDRANT_URL, MODEL_NAME, WORKERS, ... see README).",
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
    logging.getLogger("uvicorn.access").disabled = True  # app.api.context logs each request, with its id and key
    try:
        workers = settings.worker_count(cuda="CUDAExecutionProvider" in select_providers(settings.providers))
    except OceanoError as exc:  # PROVIDERS=cuda without the CUDA provider
        logger.critical("Oceano cannot start: %s", exc.message)
        raise SystemExit(1) from exc
    if workers > 1:
        serve_with_workers(settings, workers)
        return
    app = create_app(settings)
    metrics: Metrics = app.state.metrics
    guard = ConnectionGuard.from_settings(settings, on_refused=metrics.connection_refused)
    # HEADER_TIMEOUT and MAX_CLIENT_CONNECTIONS (app.api.server); each HTTP worker of WORKERS > 1 has its own
    uvicorn.run(app, http=guard.protocol(), workers=1, **uvicorn_options(settings))


if __name__ == "__main__":
    main()
