"""Clusters of unknown faces: the job that makes them (app.people.clusters_run, run by the JobManager as
JobKind.CLUSTER) and what a person does with them: list them, name one (its faces get a subject), merge two, take a
face out for good. Namings and merges are journalled (ClusterState) and finished at the next start if cut short."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from app.errors import InvalidRequest, NotFound
from app.ingest.manager import BackgroundJob, JobManager
from app.ingest.model import JobKind, JobView
from app.people.clusters_run import (
    CLUSTER_KEY,
    CORE_KEY,
    EXCLUDED_KEY,
    UNCLUSTERED,
    ClusterBook,
    ClusterParams,
    ClusterRun,
)
from app.people.clusters_state import ClusterMoveKind, ClusterRecord, ClusterState
from app.people.names import subject_name
from app.people.searched import PeopleFaceService
from app.store import FaceFilter, Match

logger = logging.getLogger(__name__)

MOVE_PAGE = 256  # faces moved per store call when a cluster is named or merged
UNCLUSTERED_TTL = 10.0  # seconds a count of the unclustered faces is answered again


@dataclass(slots=True)
class ClusterView:
    """A cluster as answers show it: its figures and (for one cluster) a page of its faces."""

    record: ClusterRecord
    faces: list[Match] = field(default_factory=list)


@dataclass(slots=True)
class ClusterPage:
    clusters: list[ClusterRecord]
    total: int
    offset: int
    limit: int
    unclustered: int
    job: JobView | None


class Clusters:
    """The clusters of one collection's unknown faces: the job that makes them (through the JobManager), and the
    actions a person takes on them. Over the PeopleFaceService; figures and membership in ClusterState."""

    def __init__(
        self,
        *,
        service: PeopleFaceService,
        state: ClusterState,
        params: ClusterParams,
    ) -> None:
        self.book = ClusterBook(service, state)
        self.service = service
        self.state = state
        self.params = params
        self.lock = threading.RLock()  # the job's page, or one action: never both
        self.jobs: JobManager | None = None  # set by app.bootstrap once the manager is built

    # ------------------------------------------------------------------ the job
    def job(self, run_id: str, report: Callable[[BackgroundJob], None]) -> ClusterRun:
        """The JobManager's runner for JobKind.CLUSTER."""
        return ClusterRun(book=self.book, params=self.params, lock=self.lock, run_id=run_id, report=report)

    def start(self) -> JobView:
        """Start a clustering job, or answer the one pending or running."""
        if self.jobs is None:
            raise InvalidRequest("this service runs no background jobs")
        return self.jobs.submit_job(JobKind.CLUSTER)

    def latest_job(self) -> JobView | None:
        return None if self.jobs is None else self.jobs.latest(JobKind.CLUSTER)

    def finish_pending(self) -> int:
        """At start-up, before requests: roll memberships forward, finish namings and merges a stop cut short."""
        self.book.roll_forward()
        moves = self.state.pending_cluster_moves()
        for record in moves:
            assert record.moving_kind is not None and record.moving_to is not None
            logger.warning("finishing the %s of cluster %s a stop cut short", record.moving_kind, record.id)
            self._move(record.id, record.moving_kind, record.moving_to)
        return len(moves)

    # ------------------------------------------------------------------ reading
    def page(self, *, offset: int, limit: int, min_size: int) -> ClusterPage:
        """Clusters largest first. Those an erasure touched are refreshed first (a few; a full run refreshes all
        it changed), so that no listing shows a gone face."""
        with self.lock:
            self.book.refresh_dirty()
        records, total = self.state.clusters(offset=offset, limit=limit, min_size=min_size)
        return ClusterPage(records, total, offset, limit, self.unclustered(), self.latest_job())

    def unclustered(self) -> int:
        """Unknown faces in no cluster: counted a page of ids at a time (one scan, 0.3-0.6 s per 100,000 faces),
        at most once every UNCLUSTERED_TTL seconds unless clusters changed (listings in between answer the last
        count: faces indexed meanwhile show after that)."""
        now = time.monotonic()
        cached = self.book.unclustered
        if cached is not None and now - cached[0] < UNCLUSTERED_TTL:
            return cached[1]
        count, offset = 0, None
        while True:
            faces, offset = self.service.list_faces(UNCLUSTERED, offset=offset, limit=1000, keys=())
            count += len(faces)
            if offset is None:
                self.book.unclustered = (now, count)
                return count

    def get(self, cluster_id: str, *, limit: int = 1000) -> ClusterView:
        record = self._record(cluster_id)
        faces, _ = self.service.list_faces(FaceFilter(no_subject=True, cluster=cluster_id), offset=None, limit=limit)
        return ClusterView(record, faces)

    def _record(self, cluster_id: str) -> ClusterRecord:
        with self.lock:
            record = self.state.cluster(cluster_id)
            if record is not None and record.moving_kind is None and record.dirty:
                record = self.book.refresh(cluster_id)
        if record is None or record.moving_kind is not None:
            raise _missing(cluster_id)
        return record

    # ------------------------------------------------------------------ actions
    def name(self, cluster_id: str, name: str) -> str:
        """Every face of the cluster gets the subject `name` (a new subject, or more faces of one), and the cluster
        is gone. Journalled: a stop half-way is finished at the next start."""
        name = subject_name(name)
        # A rename of `name` running meanwhile moves these faces too: it moves pages until none has the old name.
        with self.lock:
            self._open(cluster_id)
            self.state.begin_cluster_move(cluster_id, ClusterMoveKind.SUBJECT, name)
            self._move(cluster_id, ClusterMoveKind.SUBJECT, name)
        return name

    def merge(self, cluster_id: str, into: str) -> ClusterView:
        """Every face of `cluster_id` joins `into`; `cluster_id` is gone."""
        if cluster_id == into:
            raise InvalidRequest(f"cannot merge cluster {cluster_id!r} into itself")
        with self.lock:
            self._open(into, what="to merge into")
            self._open(cluster_id)
            self.state.begin_cluster_move(cluster_id, ClusterMoveKind.CLUSTER, into)
            self._move(cluster_id, ClusterMoveKind.CLUSTER, into)
            self.book.refresh(into)
        return self.get(into)

    def take_out(self, cluster_id: str, face_id: str) -> ClusterView:
        """The face leaves the cluster for good: later runs never put it in a cluster again."""
        with self.lock:
            self._open(cluster_id)
            found = self.service.get_faces([face_id])
            if not found or found[0].payload.get(CLUSTER_KEY) != cluster_id:
                raise NotFound(f"face {face_id} is not in cluster {cluster_id!r}")
            self.service.update_faces([found[0].id], {CLUSTER_KEY: None, CORE_KEY: None, EXCLUDED_KEY: True})
            self.state.remove_members([found[0].id])
            self.book.unclustered = None
            record = self.book.refresh(cluster_id)
        if record is None:  # its last face: the cluster is gone
            return ClusterView(ClusterRecord(cluster_id, time.time(), time.time(), 0, None, [], dirty=False))
        return self.get(cluster_id)

    def left_cluster(self, face_id: str) -> None:
        """A face given a subject leaves its cluster (the payload and the membership)."""
        with self.lock:
            if self.state.cluster_of(face_id) is not None:
                self.service.update_faces([face_id], {CLUSTER_KEY: None, CORE_KEY: None})
                self.state.remove_members([face_id])

    def _open(self, cluster_id: str, what: str = "") -> ClusterRecord:
        record = self.state.cluster(cluster_id)
        if record is None or record.moving_kind is not None:
            raise NotFound(f"no cluster {cluster_id!r}{' ' + what if what else ''}: it may have been named or merged")
        return record

    def _move(self, cluster_id: str, kind: ClusterMoveKind, target: str) -> None:
        """Every face of the cluster to the subject or the other cluster, a page at a time, then the cluster is
        dropped. Runs again from the start after a stop: faces already moved are no longer in the cluster. A face
        named since it was clustered (an upload with a subject) keeps its name and only loses the cluster."""
        where = FaceFilter(cluster=cluster_id)
        while True:
            page, _ = self.service.list_faces(where, offset=None, limit=MOVE_PAGE, keys=(CORE_KEY, "subject"))
            if not page:
                break
            named = [f.id for f in page if f.payload.get("subject")]
            if named:
                self.service.update_faces(named, {CLUSTER_KEY: None, CORE_KEY: None})
                self.state.remove_members(named)
            page = [f for f in page if not f.payload.get("subject")]
            ids = [f.id for f in page]
            if kind is ClusterMoveKind.SUBJECT:
                self.service.update_faces(ids, {"subject": target, CLUSTER_KEY: None, CORE_KEY: None})
                self.state.remove_members(ids)
            else:
                members = [(f.id, target, bool(f.payload.get(CORE_KEY))) for f in page]
                self.state.add_members(members)
                self.book.write_members(members)
        self.state.drop_cluster(cluster_id)
        self.book.unclustered = None
        logger.info("cluster %s moved to %s %r", cluster_id, kind.value, target)

    def iter_records(self) -> Iterator[ClusterRecord]:
        offset = 0
        while True:
            records, _ = self.state.clusters(offset=offset, limit=500, min_size=0)
            yield from records
            if len(records) < 500:
                return
            offset += len(records)


def _missing(cluster_id: str) -> NotFound:
    return NotFound(f"no cluster {cluster_id!r}: it may have been named, merged or emptied")
