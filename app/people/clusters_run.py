"""The clustering job: faces without a subject grouped by density over the vector index, in the spirit of
Immich's incremental face clustering (app.people.clusters: what a person does with the clusters).

A face with at least `min_faces` unknown faces (itself counted) within `max_distance` (cosine distance, 1 - score)
is a core face. Pass 1 walks the unclustered unknown faces in id order, a page at a time, with one batched index
search per page (never an all-pairs matrix): a core face joins the cluster of its nearest core neighbour that has
one, else it starts a cluster, and the cluster then grows from it breadth-first (its core neighbours are searched
next and join the same way; the face that reached one is always a candidate, so a neighbour whose own nearest
faces miss the seed still joins it). Pass 2 walks the faces still unclustered: a non-core face joins the cluster of
its nearest core face within `max_distance`, and is left unclustered otherwise.

Incremental: faces already in a cluster keep it (a run only adds faces; cluster ids never change), a face a person
took out (`cluster_excluded`) is never put back. Resumable: membership is journalled in people.sqlite before the
payloads say it (rolled forward after a crash), and the job's cursor (pass, next id, counts) is saved after every
page and every write; a resumed job starts at its cursor, and the faces clustered before the stop are no longer
in the scan (it lists unclustered faces only), so no work is redone.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.errors import InvalidRequest
from app.ingest.manager import BackgroundJob
from app.ingest.model import Progress, RunOutcome
from app.people.clusters_state import ClusterCursor, ClusterRecord, ClusterState
from app.people.covers import cover_rank
from app.people.searched import PeopleFaceService
from app.store import FaceFilter, Match

logger = logging.getLogger(__name__)

CLUSTER_KEY = "cluster"
CORE_KEY = "cluster_core"  # set on core faces: only they pull other faces into their cluster
EXCLUDED_KEY = "cluster_excluded"  # taken out by a person: never clustered again automatically
PAGE = 256  # faces per page of a pass (one batched search each)
NEIGHBOURS = 16  # nearest faces asked of the index per face (at least min_faces)
# HNSW breadth of the clustering's searches: approximate neighbours serve density (measured at 100k in README).
HNSW_EF = 32
# Faces written between index builds: an updated point leaves its indexed segment (Qdrant Edge), and searches over
# those points are exact, so a run that never rebuilt got 3x slower per search by its end (30k faces, 0.6 -> 2 ms);
# the service's INDEX_THRESHOLD (0: never during a run).
REINDEX_EVERY = 20_000
FLUSH = 512  # faces assigned before they are journalled and written
SAMPLES = 4  # sample faces shown per cluster
COHESION_FACES = 64  # faces a cluster's cohesion is measured on
UNKNOWN = FaceFilter(no_subject=True)
UNCLUSTERED = FaceFilter(no_subject=True, no_cluster=True)


@dataclass(frozen=True, slots=True)
class ClusterParams:
    min_faces: int = 3
    max_distance: float = 0.6
    neighbours: int = NEIGHBOURS
    hnsw_ef: int = HNSW_EF
    reindex_every: int = REINDEX_EVERY
    page: int = PAGE

    def __post_init__(self) -> None:
        if self.min_faces < 1:
            raise InvalidRequest(f"min_faces must be at least 1, got {self.min_faces}")
        if not 0.0 < self.max_distance < 2.0:
            raise InvalidRequest(f"max_distance must be between 0 and 2 (cosine distance), got {self.max_distance}")

    @property
    def min_score(self) -> float:
        return 1.0 - self.max_distance

    @property
    def limit(self) -> int:
        return max(self.neighbours, self.min_faces)


@dataclass(slots=True)
class ClusterCounts:
    pass_no: int = 1
    faces_seen: int = 0  # faces looked at (searched) by this job
    clustered: int = 0  # faces this job put in a cluster
    new_clusters: int = 0
    clusters_touched: int = 0  # clusters whose figures were refreshed at the end

    def to_dict(self) -> dict[str, int]:
        return {
            "pass": self.pass_no,
            "faces_seen": self.faces_seen,
            "clustered": self.clustered,
            "new_clusters": self.new_clusters,
            "clusters_touched": self.clusters_touched,
        }

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> ClusterCounts:
        return cls(
            pass_no=int(data.get("pass", 1)),
            faces_seen=int(data.get("faces_seen", 0)),
            clustered=int(data.get("clustered", 0)),
            new_clusters=int(data.get("new_clusters", 0)),
            clusters_touched=int(data.get("clusters_touched", 0)),
        )


def new_cluster_id() -> str:
    return uuid.uuid4().hex[:16]


class ClusterBook:
    """Membership and figures: what the job and the actions on clusters both write."""

    def __init__(self, service: PeopleFaceService, state: ClusterState) -> None:
        self.service = service
        self.state = state
        self.unclustered: tuple[float, int] | None = None  # (when, count): Clusters.unclustered's last count

    def write_members(self, members: Sequence[tuple[str, str, bool]]) -> None:
        by_cluster: dict[tuple[str, bool], list[str]] = {}
        for face_id, cluster, core in members:
            by_cluster.setdefault((cluster, core), []).append(face_id)
        for (cluster, core), ids in by_cluster.items():
            self.service.update_faces(ids, {CLUSTER_KEY: cluster, CORE_KEY: core})
        self.state.members_written([f for f, _, _ in members])
        self.unclustered = None

    def roll_forward(self) -> int:
        """Write the memberships journalled but not yet in the payloads (a kill between the two)."""
        done = 0
        while batch := self.state.pending_members():
            self.write_members(batch)
            done += len(batch)
        if done:
            logger.warning("cluster membership of %d faces a stop cut short: written now", done)
        return done

    # ------------------------------------------------------------------ figures
    def refresh(self, cluster_id: str) -> ClusterRecord | None:
        """Recompute a cluster's size (its members), cohesion (mean cosine of up to COHESION_FACES members to their
        normalised mean) and samples (its best faces by quality, else detection score). None: it has no face."""
        ids = self.state.members(cluster_id, limit=COHESION_FACES)
        faces = self.service.get_faces(ids) if ids else []
        gone = sorted(set(ids) - {f.id for f in faces})
        named = [f.id for f in faces if f.payload.get("subject")]  # given a subject by an upload or a move
        if gone or named:
            self.state.remove_members(gone + named)
            faces = [f for f in faces if not f.payload.get("subject")]
        size = self.state.member_count(cluster_id)
        cohesion = None
        if faces:
            vectors = self.service.face_vectors([f.id for f in faces])
            matrix = np.stack([vectors[f.id] for f in faces if f.id in vectors]) if vectors else None
            if matrix is not None and len(matrix):
                matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
                centre = matrix.mean(axis=0)
                centre /= max(float(np.linalg.norm(centre)), 1e-12)
                cohesion = round(float((matrix @ centre).mean()), 4)
        best = sorted(faces, key=lambda f: (-cover_rank(f), f.id))[:SAMPLES]
        self.state.set_figures(cluster_id, size=size, cohesion=cohesion, samples=[f.id for f in best])
        return self.state.cluster(cluster_id)

    def refresh_dirty(self, stop: threading.Event | None = None) -> int:
        done = 0
        while (batch := self.state.dirty_clusters()) and not (stop is not None and stop.is_set()):
            for cluster_id in batch:
                self.refresh(cluster_id)
                done += 1
                if stop is not None and stop.is_set():
                    break
        return done


class ClusterRun:
    """One clustering job over the collection (the BackgroundJob the JobManager drives)."""

    def __init__(
        self,
        *,
        book: ClusterBook,
        params: ClusterParams,
        lock: threading.RLock,
        run_id: str,
        report: Callable[[BackgroundJob], None] | None = None,
    ) -> None:
        self.book = book
        self.service = book.service
        self.state = book.state
        self.params = params
        self.lock = lock
        self.run_id = run_id
        self.report = report
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._started = time.monotonic()
        saved = self.state.cursor(run_id)
        self.cursor = saved or ClusterCursor(run_id, 1, None, {})
        self.counts = ClusterCounts.from_dict(self.cursor.counts)
        self._written = 0  # faces written since the last index build
        self._assigned: dict[str, str] = {}  # faces given a cluster during the current page (payloads lag)
        self._pending: list[tuple[str, str, bool]] = []

    # ------------------------------------------------------------------ BackgroundJob
    def _halted(self) -> bool:
        return self._stop.is_set() or self._cancel.is_set()

    def stop(self) -> None:
        self._stop.set()

    def cancel(self) -> None:
        self._cancel.set()

    def progress(self) -> Progress:
        return Progress(elapsed=time.monotonic() - self._started, detail=self.counts.to_dict())

    def run(self) -> RunOutcome:
        self.book.roll_forward()
        while self.cursor.pass_no in (1, 2):
            with self.lock:  # naming / merging / taking out wait for the page
                faces, next_offset = self.service.list_faces(
                    UNCLUSTERED, offset=self.cursor.offset, limit=self.params.page, keys=(EXCLUDED_KEY,)
                )
                wanted = [f.id for f in faces if not f.payload.get(EXCLUDED_KEY)]
                if self.cursor.pass_no == 1:
                    self._core_page(wanted)
                else:
                    self._other_page(wanted)
                self._flush()
                self._assigned.clear()
            if next_offset is None:
                self.cursor = ClusterCursor(self.run_id, self.cursor.pass_no + 1, None, {})
            else:
                self.cursor = ClusterCursor(self.run_id, self.cursor.pass_no, next_offset, {})
            self.counts.pass_no = min(self.cursor.pass_no, 2)
            self._save()
            if self._cancel.is_set():
                self.state.drop_cursor(self.run_id)
                return RunOutcome.CANCELLED
            if self._stop.is_set():
                return RunOutcome.STOPPED
        if self._written and self.params.reindex_every:
            self.service.build_index()
            self._written = 0
        self.counts.clusters_touched += self.book.refresh_dirty(stop=self._stop)
        if self._stop.is_set() and self.state.dirty_clusters(limit=1):
            self._save()
            return RunOutcome.STOPPED
        self.state.drop_cursor(self.run_id)
        return RunOutcome.COMPLETED

    def _save(self) -> None:
        self.cursor = ClusterCursor(self.run_id, self.cursor.pass_no, self.cursor.offset, self.counts.to_dict())
        self.state.save_cursor(self.cursor)
        if self.report is not None:
            self.report(self)

    # ------------------------------------------------------------------ pass 1: core faces
    def _search(self, ids: Sequence[str]) -> dict[str, list[Match]]:
        """Each face's unknown neighbours within max_distance (itself included), one batched search."""
        vectors = self.service.face_vectors(list(ids))
        present = [i for i in ids if i in vectors]  # erased since it was listed: left out
        if not present:
            return {}
        rows = self.service.neighbours(
            np.stack([vectors[i] for i in present]),
            limit=self.params.limit,
            min_score=self.params.min_score,
            hnsw_ef=self.params.hnsw_ef,
            where=UNKNOWN,
        )
        self.counts.faces_seen += len(present)
        return dict(zip(present, rows, strict=True))

    def _is_core(self, matches: Sequence[Match]) -> bool:
        return len(matches) >= self.params.min_faces

    def _core_cluster(self, face_id: str, matches: Sequence[Match]) -> str | None:
        """The cluster of the nearest core face among the matches that has one (None: none has)."""
        for match in matches:  # best first
            if match.id == face_id:
                continue
            if match.id in self._assigned:
                return self._assigned[match.id]
            cluster = match.payload.get(CLUSTER_KEY)
            if cluster and match.payload.get(CORE_KEY):
                return str(cluster)
        return None

    def _free(self, match: Match) -> bool:
        """A face a growing cluster may take: unclustered, not taken out by a person, not given one this page."""
        return (
            match.id not in self._assigned
            and not match.payload.get(CLUSTER_KEY)
            and not match.payload.get(EXCLUDED_KEY)
        )

    def _core_page(self, ids: Sequence[str]) -> None:
        found = self._search(ids)
        for face_id, matches in found.items():
            if face_id in self._assigned or not self._is_core(matches):
                continue  # reached by a cluster grown earlier in this page, or left to pass 2
            cluster = self._core_cluster(face_id, matches)
            if cluster is None:
                cluster = new_cluster_id()
                self.counts.new_clusters += 1
            self._assign(face_id, cluster, core=True)
            self._grow(face_id, matches)

    def _grow(self, seed: str, seed_matches: Sequence[Match]) -> None:
        """Breadth-first from a core face just clustered: its free neighbours are searched next, and each core one
        joins the cluster of its nearest clustered core neighbour (the face that reached it is one)."""
        reached_from: dict[str, str] = {}
        frontier: deque[str] = deque()
        for match in seed_matches:
            if match.id != seed and self._free(match) and match.id not in reached_from:
                reached_from[match.id] = seed
                frontier.append(match.id)
        while frontier and not self._halted():
            batch = [frontier.popleft() for _ in range(min(self.params.page, len(frontier)))]
            batch = [f for f in batch if f not in self._assigned]
            for face_id, matches in self._search(batch).items():
                if not self._is_core(matches):
                    continue  # a border face: pass 2 gives it its nearest core face's cluster
                parent = reached_from[face_id]
                cluster = self._core_cluster(face_id, matches) or self._assigned[parent]
                self._assign(face_id, cluster, core=True)
                for match in matches:
                    if match.id != face_id and self._free(match) and match.id not in reached_from:
                        reached_from[match.id] = face_id
                        frontier.append(match.id)
            if len(self._pending) >= FLUSH:
                self._flush()

    # ------------------------------------------------------------------ pass 2: the other faces
    def _other_page(self, ids: Sequence[str]) -> None:
        for face_id, matches in self._search(ids).items():
            if face_id in self._assigned:
                continue
            cluster = next(
                (
                    str(m.payload[CLUSTER_KEY])
                    for m in matches
                    if m.id != face_id and m.payload.get(CLUSTER_KEY) and m.payload.get(CORE_KEY)
                ),
                None,
            )
            if cluster is not None:
                self._assign(face_id, cluster, core=False)

    # ------------------------------------------------------------------ writes
    def _assign(self, face_id: str, cluster: str, *, core: bool) -> None:
        self._assigned[face_id] = cluster
        self._pending.append((face_id, cluster, core))
        self.counts.clustered += 1

    def _flush(self) -> None:
        """Journal the assignments (people.sqlite), then write them into the faces' payloads, then mark them
        written: a kill between the two is rolled forward by the next run."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self.state.add_members(pending)
        self.book.write_members(pending)
        self._written += len(pending)
        if self.params.reindex_every and self._written >= self.params.reindex_every:
            self.service.build_index()
            self._written = 0
        self._save()  # the counts so far (the cursor stays at this page: its clustered faces are skipped anyway)
