"""The HTTP worker's side: CoreClient (a pool of connections to the core, one per call in flight), and the
FaceServiceApi, ingest jobs and rate limiter the worker's routes use, with the surface of the single-process
ones. Upload checks, decoding and head selection run here, in the worker; what needs the engine or the store is
a call to the core (decoded pixels go over the socket)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

from app.config import Settings
from app.core.pixels import PixelSender
from app.core.wire import Catalogue, CoreAddress, EstimateBoard, Facade, remote_methods
from app.engine import Ticket, busy_error, refused_at_door
from app.errors import EngineBusy, OceanoError, ShuttingDown
from app.heads import Head
from app.imaging import DecodedImage
from app.ingest.model import IngestOptions, JobView
from app.people import IdentifiedFace
from app.service import (
    AnalyzedFace,
    EngineStatus,
    FaceServiceApi,
    ImageToIndex,
    IndexedImage,
    SearchedFace,
)
from app.store import CollectionInfo, PointQuery

logger = logging.getLogger(__name__)


class CoreGone(ShuttingDown):
    """The core process does not answer (it stopped or crashed): 503 until the service is back."""


class CoreClient:
    """Calls into the core. Thread-safe: each call takes an idle connection (or opens one), so concurrent
    requests of this worker wait on the core together, as they would on the batcher in one process."""

    def __init__(self, address: CoreAddress) -> None:
        self.address = address
        self._idle: list[PixelSender] = []  # connections with no call in flight
        self._lock = threading.Lock()
        self._closed = False
        # Ticket calls made from the event loop (cancel on a client gone) go through here, never blocking it.
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="core-ticket")

    def _connection(self) -> PixelSender:
        with self._lock:
            if self._closed:
                raise CoreGone("the service is shutting down; retry once it is back")
            if self._idle:
                return self._idle.pop()
        try:
            connection = Client(str(self.address.socket), family="AF_UNIX", authkey=self.address.authkey)
        except (OSError, EOFError) as exc:
            raise CoreGone(f"the core process does not answer ({exc}); retry once the service is back") from exc
        connection.send(os.getpid())
        return PixelSender(connection)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        line = self._connection()
        try:
            line.send((method, args, kwargs))
            ok, value = line.connection.recv()
            line.answered()
        except BaseException as exc:
            line.connection.close()  # a call cut half-way leaves the connection out of step: never reused
            if isinstance(exc, (OSError, EOFError)):
                raise CoreGone(f"the core process stopped answering ({exc!r}); retry shortly") from exc
            raise
        with self._lock:
            if self._closed:
                line.connection.close()
            else:
                self._idle.append(line)
        if not ok:
            raise value
        return value

    def later(self, method: str, *args: Any) -> None:
        """A call whose answer nobody waits for (made off the caller's thread)."""

        def run() -> None:
            try:
                self.call(method, *args)
            except OceanoError as exc:
                logger.debug("core %s: %s", method, exc.message)

        try:
            self._background.submit(run)
        except RuntimeError:  # closed: the core gives back a closing worker's tickets itself
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for line in idle:
            line.connection.close()
        self._background.shutdown(wait=False)


class RemoteTicket(Ticket):
    """A place in line held by the core; this side keeps its id. Cancelling and releasing never block the
    caller (they are called from the event loop): the core hears of them a moment later. Once handed over with
    a call, the core releases it when the call ends; a cancel still reaches it (the batcher then drops the
    request if it has not reached the engine)."""

    def __init__(self, client: CoreClient, tid: int, images: int) -> None:  # no super(): no batcher here
        self._client = client
        self.tid = tid
        self.images = images
        self.cancelled = threading.Event()
        self._reserved = True  # held here, not yet handed over with a call
        self._in_flight = False

    def cancel(self) -> None:
        self.cancelled.set()
        if self._reserved or self._in_flight:
            self._reserved = self._in_flight = False
            self._client.later("ticket_cancel", self.tid)

    def release(self) -> None:
        if self._reserved:
            self._reserved = False
            self._client.later("ticket_release", self.tid)

    def handed_over(self) -> int | None:
        """The id to send with the call that uses this place, or None when it was given up meanwhile."""
        if not self._reserved:
            return None
        self._reserved, self._in_flight = False, True
        return self.tid


def _ticket_id(ticket: Ticket | None) -> int | None:
    return ticket.handed_over() if isinstance(ticket, RemoteTicket) else None


def _names(heads: Sequence[Head]) -> str:
    return ",".join(h.name for h in heads)


class RemoteFaceService(FaceServiceApi):
    """FaceServiceApi in an HTTP worker. The heads are the core's, described (they run in the core)."""

    admit_waits = True  # a call to the core

    def __init__(self, *, settings: Settings, client: CoreClient) -> None:
        catalogue: Catalogue = client.call("catalogue")
        super().__init__(settings=settings, heads=catalogue.heads)
        self.client = client
        self.catalogue = catalogue
        self._board = EstimateBoard(client.address.estimate)

    def close(self) -> None:
        self._board.close()

    @property
    def model_name(self) -> str:
        return self.catalogue.model_name

    @property
    def fingerprint(self) -> str:
        return self.catalogue.fingerprint

    def engine_status(self) -> EngineStatus:
        status: EngineStatus = self.client.call("engine_status")
        return status

    def runtime_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.client.call("runtime_info")
        return info

    def collection_info(self) -> CollectionInfo:
        info: CollectionInfo = self.client.call("collection_info")
        return info

    def store_healthy(self) -> bool:
        try:
            return bool(self.client.call("store_healthy"))
        except CoreGone:
            return False

    def face_count(self) -> int:
        return int(self.client.call("face_count"))

    def refusal_at_door(self) -> EngineBusy | None:
        """From the core's estimate, read here without a call; a refusal is counted in the core."""
        wait, timeout = self._board.read(), self.settings.gpu_acquire_timeout
        if not refused_at_door(wait, timeout):
            return None
        self.client.later("refused_at_door")
        return busy_error(wait, timeout)

    def admit(self, images: int = 1) -> Ticket | None:
        tid = self.client.call("admit", images)
        return None if tid is None else RemoteTicket(self.client, tid, images)

    def search(
        self,
        images: Sequence[DecodedImage],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        heads: Sequence[Head] = (),
        ticket: Ticket | None = None,
        min_quality: float | None = None,
    ) -> list[list[SearchedFace]]:
        self.search_params(top_k, threshold, min_quality)  # a bad value is refused here, before the pixels travel
        rows = self.client.call(
            "search",
            images,
            top_k=top_k,
            threshold=threshold,
            heads=_names(heads),
            ticket=_ticket_id(ticket),
            min_quality=min_quality,
        )
        return [
            [_searched(image, f, bbox, kps, matches, who) for f, bbox, kps, matches, who in row]
            for image, row in zip(images, rows, strict=True)
        ]

    def analyze(
        self, images: Sequence[DecodedImage], *, heads: Sequence[Head], ticket: Ticket | None = None
    ) -> list[list[AnalyzedFace]]:
        rows: list[list[AnalyzedFace]] = self.client.call(
            "analyze", images, heads=_names(heads), ticket=_ticket_id(ticket)
        )
        return rows

    def index(self, items: Sequence[ImageToIndex], *, ticket: Ticket | None = None) -> list[IndexedImage]:
        results: list[IndexedImage] = self.client.call("index", items, ticket=_ticket_id(ticket))
        return results

    def delete_face(self, face_id: str) -> None:
        self.client.call("delete_face", face_id)

    def delete_where(self, query: PointQuery) -> list[str]:
        ids: list[str] = self.client.call("delete_where", query)
        return ids

    def thumbnail(self, face_id: str) -> Path:
        path: Path = self.client.call("thumbnail", face_id)
        return path


class RemoteFacade:
    """A facade of app.people in the core, from an HTTP worker: each of its remote methods is a call to the core,
    answered or raised as in one process."""

    def __init__(self, client: CoreClient, facade: Facade) -> None:
        self._client = client
        self._facade = facade
        self._methods = remote_methods(facade)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or name not in self._methods:
            raise AttributeError(f"{self._facade}.{name} is not called across processes")
        return partial(self._client.call, f"{self._facade}.{name}")


class RemotePeople(RemoteFacade):
    """The core's People (subjects, feedback, the overview) and its clusters, where the routes use People."""

    def __init__(self, client: CoreClient) -> None:
        super().__init__(client, Facade.PEOPLE)
        self.clusters = RemoteFacade(client, Facade.CLUSTERS)


class RemoteJobs:
    """The core's ingest jobs (IngestJobs)."""

    def __init__(self, client: CoreClient) -> None:
        self.client = client

    def submit(self, path: str, options: IngestOptions) -> JobView:
        view: JobView = self.client.call("jobs_submit", path, options)
        return view

    def get(self, job_id: str) -> JobView:
        view: JobView = self.client.call("jobs_get", job_id)
        return view

    def list(self, limit: int = 50) -> list[JobView]:
        views: list[JobView] = self.client.call("jobs_list", limit)
        return views

    def cancel(self, job_id: str, *, wait: float = 30.0) -> JobView:
        view: JobView = self.client.call("jobs_cancel", job_id, wait=wait)
        return view

    def job_counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.client.call("jobs_job_counts")
        return counts

    def file_counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.client.call("jobs_file_counts")
        return counts


class RemoteRateLimiter:
    """RATE_LIMIT counted in the core, for all workers together."""

    def __init__(self, client: CoreClient) -> None:
        self.client = client

    def acquire(self, identity: str) -> float | None:
        wait: float | None = self.client.call("rate_acquire", identity)
        return wait


def _searched(image: DecodedImage, face: Any, bbox: Any, kps: Any, matches: Any, who: Any) -> SearchedFace:
    """A searched face as the core answered it, with who it is when the core's service says (app.people)."""
    if who is None:
        return SearchedFace(face=face, bbox=bbox, kps=kps, matches=matches, image=image)
    identity, same_person, ref = who
    return IdentifiedFace(
        face=face, bbox=bbox, kps=kps, matches=matches, image=image, identity=identity, same_person=same_person, ref=ref
    )
