"""The core process's side: serves FaceService, the ingest jobs and the rate limits of one opened Services to
the HTTP worker processes, one thread per worker connection (a call blocks its thread while the request batcher
runs it, as a request thread does in a single process).

Tickets (places in line) stay here; a worker holds their ids. A worker that dies gives back the tickets it
held when its last connection closes."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Listener
from typing import Any

from app.access import RateLimiter
from app.bootstrap import Services
from app.core.peers import SharedPeerCounts
from app.core.pixels import PixelReceiver
from app.core.wire import Catalogue, CoreAddress, EstimateBoard, Facade, remote_methods
from app.engine import Ticket
from app.errors import InvalidRequest, OceanoError
from app.faces import Face
from app.imaging import DecodedImage
from app.people import IdentifiedFace, Identity
from app.service import AnalyzedFace, ImageToIndex, IndexedImage, SearchedFace
from app.store import Match

logger = logging.getLogger(__name__)

ESTIMATE_EVERY = 0.01  # seconds between writes of the engine's estimated wait for the workers' doors

# Who each face is (app.people's service): identity, same_person per match, ref; None from a plain FaceService.
PeopleAnswer = tuple[Identity | None, list[bool], str | None] | None
SearchedRow = list[tuple[Face, list[float], list[list[float]], list[Match], PeopleAnswer]]


def _light(face: Face, *, embedding: bool) -> Face:
    """A face as it crosses back to the worker: without its aligned crop (kept for the heads, never answered)."""
    face.crop = None
    if not embedding:
        face.embedding = face.embedding[:0]
    return face


class CoreServer:
    def __init__(self, services: Services, address: CoreAddress) -> None:
        self.services = services
        self.service = services.service
        self.address = address
        address.socket.unlink(missing_ok=True)
        self._listener = Listener(str(address.socket), family="AF_UNIX", authkey=address.authkey)
        address.socket.chmod(0o600)
        self._board = EstimateBoard(address.estimate, create=True)
        self._peers = SharedPeerCounts(address.connections, create=True)  # the workers count connections there
        limits = services.settings.rate_limits
        self._limiter = RateLimiter(limits) if limits else None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._tickets: dict[int, tuple[int, Ticket]] = {}  # id -> (worker pid, ticket)
        self._connections: dict[int, int] = {}  # worker pid -> open connections
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._accept, name="core-accept", daemon=True),
            threading.Thread(target=self._publish_estimate, name="core-estimate", daemon=True),
        ]
        self._calls: dict[str, Callable[..., Any]] = {
            "catalogue": self.catalogue,
            "admit": self.admit,
            "refused_at_door": self.refused_at_door,
            "ticket_cancel": self.ticket_cancel,
            "ticket_release": self.ticket_release,
            "search": self.search,
            "analyze": self.analyze,
            "index": self.index,
            "delete_face": self.service.delete_face,
            "delete_where": self.service.delete_where,
            "thumbnail": self.service.thumbnail,
            "collection_info": self.service.collection_info,
            "store_healthy": self.service.store_healthy,
            "face_count": self.service.face_count,
            "engine_status": self.service.engine_status,
            "runtime_info": self.service.runtime_info,
            "rate_acquire": self.rate_acquire,
        }
        people = services.people
        if people is not None:
            facades = {Facade.PEOPLE: people, Facade.CLUSTERS: people.clusters}
            for facade, target in facades.items():
                if target is not None:
                    self._calls.update({f"{facade}.{m}": getattr(target, m) for m in remote_methods(facade)})
        jobs = services.jobs
        if jobs is not None:
            self._calls.update(
                jobs_submit=jobs.submit,
                jobs_get=jobs.get,
                jobs_list=jobs.list,
                jobs_cancel=jobs.cancel,
                jobs_job_counts=jobs.job_counts,
                jobs_file_counts=jobs.file_counts,
            )

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        logger.info("core process %d serving workers on %s", os.getpid(), self.address.socket)

    def close(self) -> None:
        """Stop taking calls; tickets still held are given back. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.connect(str(self.address.socket))  # accept() returns (and fails the key check), then sees the stop
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            held = [ticket for _, ticket in self._tickets.values()]
            self._tickets.clear()
        for ticket in held:
            ticket.cancel()
        self._board.close()
        self._peers.close()
        self.address.socket.unlink(missing_ok=True)
        self.address.estimate.unlink(missing_ok=True)
        self.address.connections.unlink(missing_ok=True)

    # ------------------------------------------------------------------ connections
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection = self._listener.accept()
            except OSError:  # closed: the service stops
                return
            except Exception as exc:  # a caller without the key (AuthenticationError), or one that hung up
                if self._stop.is_set():
                    return
                logger.warning("core: connection refused: %r", exc)
                continue
            threading.Thread(target=self._serve, args=(connection,), name="core-call", daemon=True).start()

    def _serve(self, connection: Connection) -> None:
        pid = 0
        try:
            pid = int(connection.recv())  # the worker says who it is first
            with self._lock:
                self._connections[pid] = self._connections.get(pid, 0) + 1
            line = PixelReceiver(connection)  # the calls' pixels are read in shared memory (app.core.pixels)
            while not self._stop.is_set():
                method, args, kwargs = line.recv()
                connection.send(self._call(pid, method, args, kwargs))
                line.answered()
        except (EOFError, OSError):
            pass  # the worker closed this connection, or exited
        finally:
            connection.close()
            self._disconnected(pid)

    def _call(self, pid: int, method: str, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        call = self._calls.get(method)
        if call is None:
            return False, InvalidRequest(f"the core has no call {method!r}")
        try:
            if method == "admit":
                return True, self.admit(pid, *args, **kwargs)
            return True, call(*args, **kwargs)
        except OceanoError as exc:
            return False, exc
        except Exception as exc:
            logger.exception("core: %s failed", method)
            return False, RuntimeError(f"the core's {method} failed: {type(exc).__name__}: {exc}")
        finally:
            # Before the answer leaves: the worker's next request meets the door's estimate of now, not of
            # the moment this call was running.
            self._publish()

    def _disconnected(self, pid: int) -> None:
        with self._lock:
            left = self._connections.get(pid, 1) - 1
            if left > 0:
                self._connections[pid] = left
                return
            self._connections.pop(pid, None)
            gone = [tid for tid, (owner, _) in self._tickets.items() if owner == pid]
            tickets = [self._tickets.pop(tid)[1] for tid in gone]
        for ticket in tickets:  # the worker is gone: its places in line are given back
            ticket.cancel()

    def _publish(self) -> None:
        batcher = self.services.batcher
        self._board.write(batcher.door_wait() if batcher is not None else 0.0)

    def _publish_estimate(self) -> None:
        while not self._stop.wait(ESTIMATE_EVERY):
            self._publish()

    # ------------------------------------------------------------------ calls
    def catalogue(self) -> Catalogue:
        return Catalogue(
            model_name=self.service.model_name,
            fingerprint=self.service.fingerprint,
            backend=self.services.backend,
            heads=self.service.heads,
            core_pid=os.getpid(),
        )

    def admit(self, pid: int, images: int) -> int | None:
        ticket = self.service.admit(images)
        if ticket is None:
            return None
        with self._lock:
            tid = next(self._ids)
            self._tickets[tid] = (pid, ticket)
        return tid

    def refused_at_door(self) -> None:
        """A worker refused an upload at its door from the shared estimate: counted here, where the batcher
        keeps its counts and the engine's observer its metrics."""
        batcher = self.services.batcher
        if batcher is not None:
            batcher.count_shed_at_door()

    def _ticket(self, tid: int | None) -> Ticket | None:
        if tid is None:
            return None
        with self._lock:
            held = self._tickets.get(tid)
        return held[1] if held is not None else None

    def ticket_cancel(self, tid: int) -> None:
        with self._lock:
            held = self._tickets.pop(tid, None)
        if held is not None:
            held[1].cancel()

    def ticket_release(self, tid: int) -> None:
        with self._lock:
            held = self._tickets.pop(tid, None)
        if held is not None:
            held[1].release()

    def search(
        self,
        images: Sequence[DecodedImage],
        *,
        top_k: int | None,
        threshold: float | None,
        heads: str,
        ticket: int | None,
        min_quality: float | None = None,
    ) -> list[SearchedRow]:
        try:
            rows = self.service.search(
                images,
                top_k=top_k,
                threshold=threshold,
                heads=self.service.select_heads(heads),
                ticket=self._ticket(ticket),
                min_quality=min_quality,
            )
        finally:
            if ticket is not None:
                self.ticket_release(ticket)
        # Without the embedding: the worker answers none (who the face is was decided here, its ref remembered here).
        return [[(_light(f.face, embedding=False), f.bbox, f.kps, f.matches, _who(f)) for f in row] for row in rows]

    def analyze(self, images: Sequence[DecodedImage], *, heads: str, ticket: int | None) -> list[list[AnalyzedFace]]:
        try:
            rows = self.service.analyze(images, heads=self.service.select_heads(heads), ticket=self._ticket(ticket))
        finally:
            if ticket is not None:
                self.ticket_release(ticket)
        for row in rows:
            for face in row:
                _light(face.face, embedding=False)
        return rows

    def index(self, items: Sequence[ImageToIndex], *, ticket: int | None) -> list[IndexedImage]:
        try:
            return self.service.index(items, ticket=self._ticket(ticket))
        finally:
            if ticket is not None:
                self.ticket_release(ticket)

    def rate_acquire(self, identity: str) -> float | None:
        """RATE_LIMIT counted here for every worker, so that N workers do not let N times the rate through."""
        return self._limiter.acquire(identity) if self._limiter is not None else None


def _who(face: SearchedFace) -> PeopleAnswer:
    return (face.identity, face.same_person, face.ref) if isinstance(face, IdentifiedFace) else None
