"""What an HTTP worker process opens in place of app.bootstrap's Services: the core's client, the FaceServiceApi
and ingest jobs over it, and its own reader of the API keys (KeyStore is made for several processes: each
watches the file for the others' changes). A worker whose core process is gone stops itself."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field

from app.access import KEYS_FILE, KeyStore
from app.config import Settings
from app.core.client import CoreClient, RemoteFaceService, RemoteJobs, RemotePeople
from app.imaging import configure_pixel_limits

logger = logging.getLogger(__name__)

PARENT_CHECK = 1.0  # seconds between checks that the core process is still this worker's parent


@dataclass
class WorkerServices:
    settings: Settings
    client: CoreClient
    service: RemoteFaceService
    jobs: RemoteJobs
    people: RemotePeople
    keys: KeyStore
    backend: str
    batcher: None = None  # the request batcher is the core's
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def close(self) -> None:
        self._stop.set()
        self.keys.close()
        self.service.close()
        self.client.close()

    def watch_core(self) -> None:
        """Stop this worker (SIGTERM to itself: uvicorn's graceful shutdown) when the core process is gone."""
        core = self.service.catalogue.core_pid

        def watch() -> None:
            while not self._stop.wait(PARENT_CHECK):
                if os.getppid() != core:
                    logger.critical("the core process %d is gone: this HTTP worker %d stops", core, os.getpid())
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        threading.Thread(target=watch, name="core-watch", daemon=True).start()


def connect_core(settings: Settings, client: CoreClient) -> WorkerServices:
    configure_pixel_limits(int(settings.max_megapixels * 1e6))
    service = RemoteFaceService(settings=settings, client=client)
    keys = KeyStore(settings.state_dir / KEYS_FILE)
    keys.watch()
    services = WorkerServices(
        settings=settings,
        client=client,
        service=service,
        jobs=RemoteJobs(client),
        people=RemotePeople(client),
        keys=keys,
        backend=service.catalogue.backend,
    )
    services.watch_core()
    logger.info("HTTP worker %d connected to the core process %d", os.getpid(), service.catalogue.core_pid)
    return services
