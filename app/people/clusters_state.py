"""The clusters of unknown faces in STATE_DIR/people.sqlite (beside the subject moves and the feedback, on a
connection of their own): each cluster's figures, who is in which (journalled before the faces' payloads say it:
`pending` until written), the namings and merges under way, and each clustering job's cursor."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from app.statedb import Durability, StateFile

T = TypeVar("T")

CLUSTER_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    cohesion REAL,
    samples TEXT NOT NULL DEFAULT '[]',
    dirty INTEGER NOT NULL DEFAULT 1,
    moving_kind TEXT,
    moving_to TEXT
);
CREATE INDEX IF NOT EXISTS clusters_by_size ON clusters (size DESC, id);
CREATE INDEX IF NOT EXISTS clusters_dirty ON clusters (dirty);
CREATE TABLE IF NOT EXISTS cluster_faces (
    face_id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    core INTEGER NOT NULL,
    pending INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS cluster_faces_by_cluster ON cluster_faces (cluster);
CREATE INDEX IF NOT EXISTS cluster_faces_pending ON cluster_faces (pending);
CREATE TABLE IF NOT EXISTS cluster_cursor (
    job_id TEXT PRIMARY KEY,
    pass INTEGER NOT NULL,
    offset TEXT,
    counts TEXT NOT NULL
);
"""


class ClusterMoveKind(StrEnum):
    SUBJECT = "subject"  # the cluster is named: its faces get the subject
    CLUSTER = "cluster"  # merged into another cluster


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    id: str
    created: float
    updated: float
    size: int
    cohesion: float | None
    samples: list[str]
    moving_kind: ClusterMoveKind | None = None
    moving_to: str | None = None
    dirty: bool = True  # its figures are to be recomputed (faces joined, left or were erased)


@dataclass(frozen=True, slots=True)
class ClusterCursor:
    """Where a clustering job is: its pass (1: core faces, 2: the others), the id its next page starts at in
    that pass (None: the start), and its counts so far."""

    job_id: str
    pass_no: int
    offset: str | None
    counts: dict[str, int]


_CLUSTER_COLUMNS = "id, created, updated, size, cohesion, samples, moving_kind, moving_to, dirty"


class ClusterState(StateFile):
    """The cluster tables (their own connection to people.sqlite), shared by the job and the routes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Durability.FULL, CLUSTER_SCHEMA)  # a journalled membership survives a power cut too

    def add_members(self, members: Sequence[tuple[str, str, bool]]) -> None:
        """Record (face id, cluster, core) before the faces' payloads say so (pending until `members_written`):
        a crash between the two is rolled forward by the next run (`pending_members`). Their clusters are made
        (if new) and marked for a refresh of their figures."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO cluster_faces (face_id, cluster, core, pending) VALUES (?, ?, ?, 1) "
                "ON CONFLICT(face_id) DO UPDATE SET cluster = excluded.cluster, core = excluded.core, pending = 1",
                [(f, c, int(core)) for f, c, core in members],
            )
            db.executemany(
                "INSERT INTO clusters (id, created, updated, dirty) VALUES (?, ?, ?, 1) "
                "ON CONFLICT(id) DO UPDATE SET dirty = 1, updated = excluded.updated",
                [(c, now, now) for c in sorted({c for _, c, _ in members})],
            )

        if members:
            self._transaction(write)

    def members_written(self, face_ids: Sequence[str]) -> None:
        def write(db: sqlite3.Connection) -> None:
            for chunk in _chunks(face_ids):
                db.execute(
                    f"UPDATE cluster_faces SET pending = 0 WHERE face_id IN ({','.join('?' * len(chunk))})", chunk
                )

        if face_ids:
            self._transaction(write)

    def pending_members(self, limit: int = 10_000) -> list[tuple[str, str, bool]]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT face_id, cluster, core FROM cluster_faces WHERE pending = 1 LIMIT ?", (limit,)
            ).fetchall()
        )
        return [(r[0], r[1], bool(r[2])) for r in rows]

    def remove_members(self, face_ids: Sequence[str]) -> list[str]:
        """Take these faces out of whatever cluster they are in (erased, named, taken out); their clusters are
        marked for a refresh, and returned."""

        def write(db: sqlite3.Connection) -> list[str]:
            touched: set[str] = set()
            for chunk in _chunks(face_ids):
                marks = ",".join("?" * len(chunk))
                touched.update(
                    r[0]
                    for r in db.execute(
                        f"SELECT DISTINCT cluster FROM cluster_faces WHERE face_id IN ({marks})", chunk
                    ).fetchall()
                )
                db.execute(f"DELETE FROM cluster_faces WHERE face_id IN ({marks})", chunk)
            for cluster in touched:
                db.execute("UPDATE clusters SET dirty = 1 WHERE id = ?", (cluster,))
            return sorted(touched)

        return self._transaction(write) if face_ids else []

    def cluster_of(self, face_id: str) -> str | None:
        row = self._run(
            lambda db: db.execute("SELECT cluster FROM cluster_faces WHERE face_id = ?", (face_id,)).fetchone()
        )
        return None if row is None else str(row[0])

    def members(self, cluster: str, *, limit: int) -> list[str]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT face_id FROM cluster_faces WHERE cluster = ? ORDER BY face_id LIMIT ?", (cluster, limit)
            ).fetchall()
        )
        return [r[0] for r in rows]

    def member_count(self, cluster: str) -> int:
        return int(
            self._run(
                lambda db: db.execute("SELECT COUNT(*) FROM cluster_faces WHERE cluster = ?", (cluster,)).fetchone()[0]
            )
        )

    def clustered_count(self) -> int:
        return int(self._run(lambda db: db.execute("SELECT COUNT(*) FROM cluster_faces").fetchone()[0]))

    def cluster(self, cluster_id: str) -> ClusterRecord | None:
        row = self._run(
            lambda db: db.execute(f"SELECT {_CLUSTER_COLUMNS} FROM clusters WHERE id = ?", (cluster_id,)).fetchone()
        )
        return None if row is None else _cluster(row)

    def clusters(self, *, offset: int, limit: int, min_size: int) -> tuple[list[ClusterRecord], int]:
        """A page of clusters, largest first (then by id), and how many there are of at least `min_size`."""

        def read(db: sqlite3.Connection) -> tuple[list[Any], int]:
            rows = db.execute(
                f"SELECT {_CLUSTER_COLUMNS} FROM clusters WHERE size >= ? ORDER BY size DESC, id LIMIT ? OFFSET ?",
                (min_size, limit, offset),
            ).fetchall()
            total = db.execute("SELECT COUNT(*) FROM clusters WHERE size >= ?", (min_size,)).fetchone()[0]
            return rows, int(total)

        rows, total = self._run(read)
        return [_cluster(r) for r in rows], total

    def dirty_clusters(self, limit: int = 1000) -> list[str]:
        rows = self._run(
            lambda db: db.execute("SELECT id FROM clusters WHERE dirty = 1 ORDER BY id LIMIT ?", (limit,)).fetchall()
        )
        return [r[0] for r in rows]

    def set_figures(self, cluster_id: str, *, size: int, cohesion: float | None, samples: Sequence[str]) -> None:
        """A cluster's refreshed figures (a cluster left with no face is dropped)."""

        def write(db: sqlite3.Connection) -> None:
            if size == 0:
                db.execute("DELETE FROM clusters WHERE id = ? AND moving_kind IS NULL", (cluster_id,))
                return
            db.execute(
                "UPDATE clusters SET size = ?, cohesion = ?, samples = ?, dirty = 0, updated = ? WHERE id = ?",
                (size, cohesion, json.dumps(list(samples)), time.time(), cluster_id),
            )

        self._transaction(write)

    def begin_cluster_move(self, cluster_id: str, kind: ClusterMoveKind, target: str) -> None:
        """Journal a naming or merge of the cluster before its first face changes (finished at start-up if a stop
        cuts it short)."""
        self._run(
            lambda db: db.execute(
                "UPDATE clusters SET moving_kind = ?, moving_to = ? WHERE id = ?", (kind.value, target, cluster_id)
            )
        )

    def pending_cluster_moves(self) -> list[ClusterRecord]:
        rows = self._run(
            lambda db: db.execute(f"SELECT {_CLUSTER_COLUMNS} FROM clusters WHERE moving_kind IS NOT NULL").fetchall()
        )
        return [_cluster(r) for r in rows]

    def drop_cluster(self, cluster_id: str) -> None:
        """The cluster is gone (named or merged away): its row and any membership left."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM cluster_faces WHERE cluster = ?", (cluster_id,))
            db.execute("DELETE FROM clusters WHERE id = ?", (cluster_id,))

        self._transaction(write)

    def cursor(self, job_id: str) -> ClusterCursor | None:
        row = self._run(
            lambda db: db.execute(
                "SELECT job_id, pass, offset, counts FROM cluster_cursor WHERE job_id = ?", (job_id,)
            ).fetchone()
        )
        return None if row is None else ClusterCursor(row[0], int(row[1]), row[2], json.loads(row[3]))

    def save_cursor(self, cursor: ClusterCursor) -> None:
        self._run(
            lambda db: db.execute(
                "INSERT INTO cluster_cursor (job_id, pass, offset, counts) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET pass = excluded.pass, offset = excluded.offset, "
                "counts = excluded.counts",
                (cursor.job_id, cursor.pass_no, cursor.offset, json.dumps(cursor.counts)),
            )
        )

    def drop_cursor(self, job_id: str) -> None:
        self._run(lambda db: db.execute("DELETE FROM cluster_cursor WHERE job_id = ?", (job_id,)))


def _chunks(items: Sequence[str], size: int = 500) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _cluster(r: Sequence[Any]) -> ClusterRecord:
    return ClusterRecord(
        id=r[0],
        created=float(r[1]),
        updated=float(r[2]),
        size=int(r[3]),
        cohesion=None if r[4] is None else float(r[4]),
        samples=list(json.loads(r[5] or "[]")),
        moving_kind=None if r[6] is None else ClusterMoveKind(r[6]),
        moving_to=r[7],
        dirty=bool(r[8]),
    )
