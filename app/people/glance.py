"""The collection at a glance (faces, subjects, unknown faces, their clusters) and a stored face's nearest faces:
what the people page shows beside the subjects. People (app.people.people) feeds these from the store."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import NotFound
from app.ingest.model import JobView
from app.people.searched import PeopleFaceService
from app.store import FaceFilter, Match

OVERVIEW_KEYS = ("subject", "cluster")  # the payload keys the overview reads


@dataclass(frozen=True, slots=True)
class Overview:
    faces: int
    subjects: int
    unknown_faces: int  # faces without a subject
    clusters: int  # cluster ids held by faces without a subject (a named cluster's faces have a subject)
    unclustered: int  # faces without a subject and in no cluster
    last_cluster_job: JobView | None = None  # the latest clustering job (None: none ran, or no clusters here)


def tally(faces: Iterable[tuple[str | None, Any]], *, last_cluster_job: JobView | None = None) -> Overview:
    """The overview of (subject shown, cluster) pairs, one per face; memory: one entry per subject and cluster."""
    count = unknown = unclustered = 0
    subjects: set[str] = set()
    clusters: set[str] = set()
    for subject, cluster in faces:
        count += 1
        if subject is not None:
            subjects.add(subject)
        elif isinstance(cluster, str) and cluster:
            clusters.add(cluster)
        else:
            unclustered += 1
        unknown += subject is None
    return Overview(count, len(subjects), unknown, len(clusters), unclustered, last_cluster_job)


@dataclass(slots=True)
class Similar:
    """A stored face's nearest other stored faces, each with whether it passes the threshold in force."""

    face: Match
    matches: list[Match]
    same_person: list[bool]
    threshold: float


def nearest_faces(
    service: PeopleFaceService, face_id: str, *, limit: int, threshold: float, shown: Callable[[Any], str | None]
) -> Similar:
    """The stored faces nearest to a stored one (itself left out); `shown` gives the subject each face shows now."""
    found = service.get_faces([face_id])
    vector = service.face_vectors([found[0].id]).get(found[0].id) if found else None
    if not found or vector is None:
        raise NotFound(f"no face with id {face_id}")
    face = found[0]
    nearest = service.neighbours(
        np.asarray(vector, np.float32)[None, :],
        limit=limit + 1,
        min_score=-1.0,  # cosine: every face, best first
        where=FaceFilter(),
        hnsw_ef=service.settings.hnsw_ef,
    )[0]
    matches = [m for m in nearest if m.id != face.id][:limit]
    for one in (face, *matches):
        one.payload["subject"] = shown(one.payload.get("subject"))
    return Similar(face, matches, [m.score >= threshold for m in matches], threshold)
