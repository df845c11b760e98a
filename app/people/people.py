"""People: subjects as a resource over the faces of the collection, who the faces of a search are, and the feedback
on matches. Above FaceService (it only calls the facade); state in STATE_DIR/people.sqlite (app.people.state)."""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.calibration import CalibratedThreshold, Pairs, ThresholdStore, build_pairs
from app.calibration.report import Calibration, calibrate
from app.errors import Conflict, InvalidRequest, NotFound
from app.people.clusters import Clusters
from app.people.covers import COVER_KEYS, cover_rank
from app.people.enrolled import EnrolledSample, sample_enrolled
from app.people.feedback import FeedbackPairs, cosine, feedback_pairs
from app.people.glance import OVERVIEW_KEYS, Overview, Similar, nearest_faces, tally
from app.people.identity import identify_photo
from app.people.names import subject_name
from app.people.searched import IdentifiedFace, PeopleFaceService
from app.people.state import FeedbackRecord, Move, MoveKind, PeopleState
from app.store import FaceFilter, Match, PointQuery

logger = logging.getLogger(__name__)

SCAN_PAGE = 1000  # faces per page when subjects are counted (memory: one page plus one entry per subject)
MOVE_PAGE = 256  # faces renamed per store call during a rename or merge
QUERY_REFS = 4096  # searched faces remembered for feedback on them (their embeddings, ~2 KB each)
REF_PREFIX = "q-"
SUMMARY_KEYS = ("subject", "ingested_at", *COVER_KEYS)


@dataclass(slots=True)
class SubjectSummary:
    name: str
    faces: int = 0
    cover: str | None = None  # the face that shows the subject best (app.people.covers)
    cover_score: float = -2.0  # under any face's rank
    created: float | None = None  # the earliest face's ingest time
    updated: float | None = None  # the latest face's ingest time

    def add(self, face: Match) -> None:
        self.faces += 1
        score = cover_rank(face)
        if score > self.cover_score:
            self.cover, self.cover_score = face.id, score
        at = face.payload.get("ingested_at")
        if isinstance(at, int | float):
            self.created = at if self.created is None else min(self.created, at)
            self.updated = at if self.updated is None else max(self.updated, at)


@dataclass(slots=True)
class SubjectPage:
    subjects: list[SubjectSummary]
    total: int
    offset: int
    limit: int


@dataclass(slots=True)
class FacePage:
    faces: list[Match]
    next: str | None  # where the next page starts (None: the end)


class People:
    """Subjects, identities and feedback over one FaceService. Renames and merges run one at a time (this process
    owns the collection), journalled in PeopleState; while one runs, searches and listings already show the new
    name for every face of the old one."""

    def __init__(
        self,
        *,
        service: PeopleFaceService,
        state: PeopleState,
        state_dir: Path,
        collection: str,
        fingerprint: str,
        pack: str,
    ) -> None:
        self.service = service
        self.state = state
        self.thresholds = ThresholdStore(state_dir)
        self.collection, self.fingerprint, self.pack = collection, fingerprint, pack
        self._moves = threading.Lock()
        self._aliases: dict[str, str] = {}  # source -> target of the move running now
        self._refs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._refs_lock = threading.Lock()
        self._threshold: tuple[int, CalibratedThreshold] | None = None
        self.clusters: Clusters | None = None  # set by app.bootstrap: the clusters of the unknown faces

    # ------------------------------------------------------------------ threshold and identity
    def threshold(self) -> CalibratedThreshold:
        """The threshold in force: calibrated for this collection and fingerprint, else the pack's default. Read
        again when calibration.json changes (`python -m app.calibrate --apply` while the service runs)."""
        try:
            stamp = self.thresholds.path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        cached = self._threshold
        if cached is None or cached[0] != stamp:
            cached = (stamp, self.thresholds.in_force(self.collection, self.fingerprint, self.pack))
            self._threshold = cached
        return cached[1]

    def identify(self, photo: Sequence[IdentifiedFace]) -> None:
        """Who the faces of one photo are (one subject per face of the photo), whether each match passes the
        threshold, and a reference to each face for feedback."""
        threshold = self.threshold().threshold
        rows = []
        for face in photo:
            for match in face.matches:
                if match.payload.get("subject") in self._aliases:
                    match.payload["subject"] = self._aliases[match.payload["subject"]]
            rows.append([(m.payload.get("subject"), m.score) for m in face.matches])
            face.same_person = [m.score >= threshold for m in face.matches]
            if face.face.embedding is not None:
                face.ref = self._remember(face.face.embedding)
        for face, identity in zip(photo, identify_photo(rows, threshold), strict=True):
            face.identity = identity

    def _remember(self, embedding: np.ndarray) -> str:
        vector = np.asarray(embedding, np.float32)
        ref = REF_PREFIX + hashlib.sha256(vector.tobytes()).hexdigest()[:24]
        with self._refs_lock:
            self._refs[ref] = vector
            self._refs.move_to_end(ref)
            while len(self._refs) > QUERY_REFS:
                self._refs.popitem(last=False)
        return ref

    # ------------------------------------------------------------------ subjects
    def _shown(self, subject: Any) -> str | None:
        if not isinstance(subject, str) or not subject:
            return None
        return self._aliases.get(subject, subject)

    def _scan(self, where: FaceFilter, keys: Sequence[str] = SUMMARY_KEYS) -> Iterator[Match]:
        offset: str | None = None
        while True:
            faces, offset = self.service.list_faces(where, offset=offset, limit=SCAN_PAGE, keys=keys)
            yield from faces
            if offset is None:
                return

    def summaries(self) -> dict[str, SubjectSummary]:
        """Every subject with its face count, cover, created and updated: one scan of the collection in pages
        (memory: a page, plus one entry per subject)."""
        found: dict[str, SubjectSummary] = {}
        for face in self._scan(FaceFilter()):
            name = self._shown(face.payload.get("subject"))
            if name is not None:
                found.setdefault(name, SubjectSummary(name)).add(face)
        return found

    def subjects(self, *, search: str | None, offset: int, limit: int) -> SubjectPage:
        """Subjects in name order; `search`: only names holding it (case-insensitive)."""
        found = sorted(self.summaries().values(), key=lambda s: (s.name.casefold(), s.name))
        if search:
            needle = search.casefold()
            found = [s for s in found if needle in s.name.casefold()]
        return SubjectPage(found[offset : offset + limit], len(found), offset, limit)

    def summary(self, name: str) -> SubjectSummary:
        name = subject_name(name)
        summary = SubjectSummary(name)
        for source in [name, *(s for s, t in self._aliases.items() if t == name)]:
            for face in self._scan(FaceFilter(subject=source)):
                summary.add(face)
        if not summary.faces:
            raise NotFound(f"no subject {name!r}: no face has this subject")
        return summary

    def overview(self) -> Overview:
        """Faces, subjects, unknown faces and their clusters: one scan of two payload keys, a page at a time."""
        faces = self._scan(FaceFilter(), keys=OVERVIEW_KEYS)
        job = self.clusters.latest_job() if self.clusters is not None else None
        return tally(
            ((self._shown(f.payload.get("subject")), f.payload.get("cluster")) for f in faces), last_cluster_job=job
        )

    def similar(self, face_id: str, *, limit: int) -> Similar:
        """The stored faces nearest to a stored one (itself left out), for 'find similar' and feedback on them."""
        return nearest_faces(
            self.service, face_id, limit=limit, threshold=self.threshold().threshold, shown=self._shown
        )

    def faces(self, where: FaceFilter, *, after: str | None, limit: int) -> FacePage:
        """One page of faces (id order) with the subjects they show now; `after`: the `next` of the page before."""
        if after is not None:
            try:
                after = str(uuid.UUID(after))
            except ValueError:
                raise InvalidRequest(f"`after` {after!r} is not the `next` of a page (a face id)") from None
        faces, next_offset = self.service.list_faces(where, offset=after, limit=limit)
        for face in faces:
            face.payload["subject"] = self._shown(face.payload.get("subject"))
        return FacePage(faces, next_offset)

    def _exists(self, name: str) -> bool:
        faces, _ = self.service.list_faces(FaceFilter(subject=name), offset=None, limit=1, keys=("subject",))
        return bool(faces)

    def rename(self, name: str, new_name: str) -> SubjectSummary:
        """Every face of `name` gets `new_name`. Refused (409) when `new_name` is another subject's: merge them
        instead. A retried rename that already finished answers as the first did."""
        name, new_name = subject_name(name), subject_name(new_name, what="new name")
        with self._moves:
            if name != new_name:
                if not self._exists(name):
                    if self.state.last_done(name, new_name) is not None:  # a retry of a rename that finished
                        return self.summary(new_name)
                    raise NotFound(f"no subject {name!r}: no face has this subject")
                if self._exists(new_name):
                    raise Conflict(
                        f"{new_name!r} is already a subject: merge {name!r} into it "
                        f"(POST /api/subjects/{new_name}/merge) instead of renaming"
                    )
                self._run_move(self.state.begin_move(MoveKind.RENAME, name, new_name))
        return self.summary(new_name)

    def merge(self, target: str, source: str) -> SubjectSummary:
        """Every face of `source` joins `target`. A retried merge that already finished answers as the first did."""
        target, source = subject_name(target), subject_name(source, what="subject to merge")
        if target == source:
            raise InvalidRequest(f"cannot merge {target!r} into itself")
        with self._moves:
            if not self._exists(target):
                raise NotFound(f"no subject {target!r} to merge into (to give {source!r} a new name, PATCH it)")
            if not self._exists(source):
                if self.state.last_done(source, target) is not None:
                    return self.summary(target)
                raise NotFound(f"no subject {source!r}: no face has this subject")
            self._run_move(self.state.begin_move(MoveKind.MERGE, source, target))
        return self.summary(target)

    def _run_move(self, move: Move) -> None:
        """Move every face of the source to the target, a page at a time, recording progress; searches and
        listings show the target name for the source meanwhile. Runs again from the start after a crash
        (finish_pending): faces already moved are no longer found under the source."""
        self._aliases[move.source] = move.target
        try:
            while True:
                page, _ = self.service.list_faces(
                    FaceFilter(subject=move.source), offset=None, limit=MOVE_PAGE, keys=("subject",)
                )
                if not page:
                    break
                self.service.set_subject([f.id for f in page], move.target)
                self.state.progress(move.id, len(page))
            self.state.finish_move(move)
        finally:
            self._aliases.pop(move.source, None)
        logger.info("%s of subject %r into %r done", move.kind.value, move.source, move.target)

    def finish_pending(self) -> int:
        """At start-up, before requests: finish the renames and merges a crash interrupted."""
        pending = self.state.pending_moves()
        with self._moves:
            for move in pending:
                logger.warning("finishing the %s of %r into %r a stop interrupted", move.kind, move.source, move.target)
                self._run_move(move)
        return len(pending)

    def set_face_subject(self, face_id: str, subject: str | None) -> Match:
        """Move one face to another subject, or clear its subject (None)."""
        name = subject_name(subject) if subject is not None else None
        with self._moves:
            found = self.service.get_faces([face_id])
            if not found:
                raise NotFound(f"no face with id {face_id}")
            self.service.set_subject([found[0].id], name)
            if name is not None and self.clusters is not None:
                self.clusters.left_cluster(found[0].id)
        found[0].payload["subject"] = name
        return found[0]

    def delete_subject(self, name: str) -> list[str]:
        """Erase every face of the subject (as DELETE /api/faces?subject= does) and the feedback about it."""
        name = subject_name(name)
        with self._moves:
            if any(t == name or s == name for s, t in self._aliases.items()):
                raise Conflict(f"subject {name!r} is being renamed or merged; retry when that has finished")
            deleted = self.service.delete_where(PointQuery(subject=name))
            self.forget(deleted, subject=name)
        return deleted

    def forget(self, face_ids: Sequence[str], *, subject: str | None = None) -> int:
        """Erase the feedback about these faces (and this subject), and their cluster memberships."""
        return self.state.forget(face_ids=face_ids, subject=subject)

    # ------------------------------------------------------------------ feedback
    def add_feedback(self, *, query: str, match_id: str, same_person: bool, key: str | None) -> FeedbackRecord:
        """Record that the query face and the match are (or are not) the same person. The query is a stored
        face's id or the `ref` a search gave the face (its vector is kept with the feedback). 404 when either
        face is unknown."""
        matches = self.service.get_faces([match_id])
        if not matches:
            raise NotFound(f"no face with id {match_id} (match_id): it may have been erased")
        query_face = query_subject = None
        query_vector: np.ndarray | None
        if query.startswith(REF_PREFIX):
            with self._refs_lock:
                query_vector = self._refs.get(query)
            if query_vector is None:
                raise NotFound(
                    f"no searched face {query!r}: references are kept for the last {QUERY_REFS} faces searched since "
                    "the service started; search the photo again"
                )
        else:
            found = self.service.get_faces([query])
            if not found:
                raise NotFound(f"no face with id {query} (query): it may have been erased")
            query_face, query_subject = found[0].id, self._shown(found[0].payload.get("subject"))
            query_vector = None
        vectors = self.service.face_vectors([i for i in (match_id, query_face) if i])
        if match_id not in vectors or (query_face is not None and query_face not in vectors):
            raise NotFound("the face was erased while the feedback was recorded")
        score = cosine(vectors[query_face] if query_face else query_vector, vectors[match_id])  # type: ignore[arg-type]
        return self.state.add_feedback(
            key=key,
            query=query,
            query_face=query_face,
            query_vector=query_vector,
            query_subject=query_subject,
            match_id=matches[0].id,
            match_subject=self._shown(matches[0].payload.get("subject")),
            same_person=same_person,
            score=round(score, 6),
        )

    def feedback(self, *, after: int = 0, limit: int = 100) -> list[FeedbackRecord]:
        """The feedback in the order it was given, after the record `after`."""
        return self.state.feedback(after=after, limit=limit)

    def feedback_count(self) -> int:
        return self.state.feedback_count()

    def feedback_pairs(self) -> FeedbackPairs:
        """Every feedback as a labelled pair, scored from the stored vectors now (pairs whose faces were erased
        since are left out)."""
        return feedback_pairs(self.state, self.service)

    def calibrate_feedback(self, *, far: float, apply: bool, rounds: int = 200) -> tuple[Calibration, FeedbackPairs]:
        """The threshold for FAR `far` measured on the stored feedback (thumbs up: genuine, down: impostor);
        `apply` stores it with the collection, as `python -m app.calibrate --apply` does."""
        labelled = self.feedback_pairs()
        pairs = labelled.pairs
        if pairs.genuine < 1 or pairs.impostor < 1:
            raise InvalidRequest(
                f"the feedback holds {pairs.genuine} 'same person' and {pairs.impostor} 'someone else' pairs: "
                "calibration needs at least one of each"
            )
        source = f"feedback ({pairs.genuine} genuine, {pairs.impostor} impostor pairs)"
        result = self._calibrate(pairs, far=far, apply=apply, rounds=rounds, left_out=labelled.left_out, source=source)
        return result, labelled

    def calibrate_enrolled(
        self, *, far: float, apply: bool, per_subject: int, max_faces: int, rounds: int = 200
    ) -> tuple[Calibration, EnrolledSample]:
        """The threshold for FAR `far` measured on the collection's own subjects: faces of one subject make the
        genuine pairs, faces of two subjects the impostor pairs, scored from the stored vectors. Bounded: at most
        `per_subject` faces of a subject and `max_faces` in all (max_faces (max_faces - 1) / 2 pairs)."""
        named = ((f.id, self._shown(f.payload.get("subject"))) for f in self._scan(FaceFilter(), keys=("subject",)))
        sample = sample_enrolled(named, per_subject=per_subject, max_faces=max_faces)
        vectors: dict[str, np.ndarray] = {}
        for start in range(0, len(sample.files), SCAN_PAGE):
            vectors.update(self.service.face_vectors(sample.files[start : start + SCAN_PAGE]))
        kept = [i for i, face_id in enumerate(sample.files) if face_id in vectors]  # (erased meanwhile: left out)
        files = [sample.files[i] for i in kept]
        identities = [sample.identities[i] for i in kept]
        sample.files, sample.identities = files, identities
        pairs = build_pairs(files, identities, np.stack([vectors[f] for f in files]) if files else np.zeros((0, 1)))
        if pairs.genuine < 1 or pairs.impostor < 1:
            raise InvalidRequest(
                f"the subjects give {pairs.genuine} 'same person' and {pairs.impostor} 'someone else' pairs: "
                "calibration needs two subjects, one of them with two faces or more"
            )
        source = f"enrolled subjects ({sample.subjects} subjects, {len(files)} faces)"
        return self._calibrate(pairs, far=far, apply=apply, rounds=rounds, left_out={}, source=source), sample

    def _calibrate(
        self, pairs: Pairs, *, far: float, apply: bool, rounds: int, left_out: dict[str, str], source: str
    ) -> Calibration:
        """The threshold for FAR `far` on these pairs; `apply` puts it in force, recorded as from `source`."""
        result, _ = calibrate(
            pairs,
            pack=self.pack,
            fingerprint=self.fingerprint,
            far_targets=[far],
            chosen_far=far,
            rounds=max(10, rounds),
            left_out=left_out,
        )
        if apply:
            self._apply(result, far, source)
        return result

    def _apply(self, result: Calibration, far: float, source: str) -> None:
        point = result.chosen.point
        self.thresholds.put(
            self.collection,
            self.fingerprint,
            CalibratedThreshold(
                threshold=point.threshold,
                source=source,
                far_target=far,
                far=point.far,
                frr=point.frr,
                eer=result.eer.far,
                genuine_pairs=result.genuine_pairs,
                impostor_pairs=result.impostor_pairs,
                measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
            ),
        )
