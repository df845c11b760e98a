"""STATE_DIR/people.sqlite: the journal of subject moves (renames and merges) and the feedback on matches (the
clusters of unknown faces have their tables in the same file: app.people.clusters_state).

A move is recorded before its first face changes and marked done after its last: a move found unfinished at
start-up is finished before the service takes requests (faces are moved a page at a time, so a crash half-way
leaves a pending row, never a forgotten mix of old and new names)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.people.clusters_state import CLUSTER_SCHEMA
from app.statedb import Durability, StateFile

PEOPLE_FILE = "people.sqlite"
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS moves (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    moved INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS moves_pending ON moves (done, source);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    key TEXT,
    query TEXT NOT NULL,
    query_face TEXT,
    query_vector BLOB,
    query_subject TEXT,
    match_id TEXT NOT NULL,
    match_subject TEXT,
    same_person INTEGER NOT NULL,
    score REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_match ON feedback (match_id);
CREATE INDEX IF NOT EXISTS feedback_query_face ON feedback (query_face);
"""


class MoveKind(StrEnum):
    RENAME = "rename"
    MERGE = "merge"


@dataclass(frozen=True, slots=True)
class Move:
    id: int
    kind: MoveKind
    source: str
    target: str
    moved: int
    done: bool


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    id: int
    created: float
    key: str | None
    query: str
    query_face: str | None
    query_subject: str | None
    match_id: str
    match_subject: str | None
    same_person: bool
    score: float


_FEEDBACK_COLUMNS = "id, created, key, query, query_face, query_subject, match_id, match_subject, same_person, score"


class PeopleState(StateFile):
    """The moves journal and the feedback (forget() erases cluster memberships too: their tables are here)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Durability.FULL, _SCHEMA + CLUSTER_SCHEMA)  # a recorded move survives a power cut

    # ------------------------------------------------------------------ moves
    def begin_move(self, kind: MoveKind, source: str, target: str) -> Move:
        def insert(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO moves (kind, source, target, started) VALUES (?, ?, ?, ?)",
                (kind.value, source, target, time.time()),
            )
            return int(cursor.lastrowid or 0)

        return Move(self._run(insert), kind, source, target, 0, False)

    def progress(self, move_id: int, moved: int) -> None:
        self._run(lambda db: db.execute("UPDATE moves SET moved = moved + ? WHERE id = ?", (moved, move_id)))

    def finish_move(self, move: Move) -> None:
        """Mark the move done; the feedback naming its source names its target from now on (one transaction)."""

        def finish(db: sqlite3.Connection) -> None:
            db.execute("UPDATE moves SET done = 1, finished = ? WHERE id = ?", (time.time(), move.id))
            for column in ("query_subject", "match_subject"):
                db.execute(f"UPDATE feedback SET {column} = ? WHERE {column} = ?", (move.target, move.source))

        self._transaction(finish)

    def pending_moves(self) -> list[Move]:
        return self._moves("WHERE done = 0")

    def last_done(self, source: str, target: str) -> Move | None:
        found = self._moves("WHERE done = 1 AND source = ? AND target = ? ORDER BY id DESC LIMIT 1", (source, target))
        return found[0] if found else None

    def _moves(self, where: str, args: Sequence[Any] = ()) -> list[Move]:
        rows = self._run(
            lambda db: db.execute(f"SELECT id, kind, source, target, moved, done FROM moves {where}", args).fetchall()
        )
        return [Move(int(r[0]), MoveKind(r[1]), r[2], r[3], int(r[4]), bool(r[5])) for r in rows]

    # ------------------------------------------------------------------ feedback
    def add_feedback(
        self,
        *,
        key: str | None,
        query: str,
        query_face: str | None,
        query_vector: np.ndarray | None,
        query_subject: str | None,
        match_id: str,
        match_subject: str | None,
        same_person: bool,
        score: float,
    ) -> FeedbackRecord:
        created = time.time()
        blob = None if query_vector is None else np.asarray(query_vector, np.float32).tobytes()

        def insert(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO feedback (created, key, query, query_face, query_vector, query_subject, match_id, "
                "match_subject, same_person, score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    created,
                    key,
                    query,
                    query_face,
                    blob,
                    query_subject,
                    match_id,
                    match_subject,
                    int(same_person),
                    score,
                ),
            )
            return int(cursor.lastrowid or 0)

        row_id = self._run(insert)
        return FeedbackRecord(
            row_id, created, key, query, query_face, query_subject, match_id, match_subject, same_person, score
        )

    def feedback(self, *, after: int = 0, limit: int = 100) -> list[FeedbackRecord]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        )
        return [_record(r) for r in rows]

    def feedback_count(self) -> int:
        return int(self._run(lambda db: db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]))

    def feedback_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The query vectors kept with feedback on a searched photo (not a stored face)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._run(
            lambda db: db.execute(
                f"SELECT id, query_vector FROM feedback WHERE id IN ({marks}) AND query_vector IS NOT NULL", list(ids)
            ).fetchall()
        )
        return {int(r[0]): np.frombuffer(r[1], np.float32) for r in rows}

    def forget(self, *, face_ids: Sequence[str] = (), subject: str | None = None) -> int:
        """Erase the feedback naming these faces (as query or match) or this subject: erasure of a person
        erases what was said about them. Erased faces leave their clusters in the same transaction."""

        def delete(db: sqlite3.Connection) -> int:
            gone = 0
            for start in range(0, len(face_ids), 500):
                chunk = list(face_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                gone += db.execute(
                    f"DELETE FROM feedback WHERE match_id IN ({marks}) OR query_face IN ({marks})", chunk + chunk
                ).rowcount
                db.execute(  # their clusters' figures are refreshed before they are listed again
                    "UPDATE clusters SET dirty = 1 WHERE id IN "
                    f"(SELECT cluster FROM cluster_faces WHERE face_id IN ({marks}))",
                    chunk,
                )
                db.execute(f"DELETE FROM cluster_faces WHERE face_id IN ({marks})", chunk)
            if subject is not None:
                gone += db.execute(
                    "DELETE FROM feedback WHERE query_subject = ? OR match_subject = ?", (subject, subject)
                ).rowcount
            return gone

        return self._transaction(delete)


def _record(r: Sequence[Any]) -> FeedbackRecord:
    return FeedbackRecord(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), float(r[9]))
