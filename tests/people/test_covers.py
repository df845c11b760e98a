"""A subject's cover and a cluster's samples are its best faces by quality score (app.people.covers); faces
indexed before quality was recorded rank by detector score, below any face with a quality score."""

from __future__ import annotations

from app.people import SubjectSummary
from app.people.covers import cover_rank
from app.store import Match


def face(face_id: str, **payload: float) -> Match:
    return Match(face_id, 0.0, {"subject": "Ann", **payload})


def test_the_cover_is_the_best_quality_face_not_the_best_detection() -> None:
    summary = SubjectSummary("Ann")
    for f in (
        face("sharp", det_score=0.71, quality=0.93),
        face("blurred-but-confident", det_score=0.89, quality=0.12),
        face("legacy", det_score=0.95),  # indexed before quality existed
    ):
        summary.add(f)
    assert summary.cover == "sharp" and summary.faces == 3


def test_faces_without_quality_rank_by_detection_below_any_scored_face() -> None:
    assert cover_rank(face("a", det_score=0.99)) < cover_rank(face("b", det_score=0.5, quality=0.0))
    assert cover_rank(face("a", det_score=0.9)) > cover_rank(face("b", det_score=0.6))
    summary = SubjectSummary("Ann")
    for f in (face("older", det_score=0.6), face("clearer", det_score=0.9)):
        summary.add(f)
    assert summary.cover == "clearer"
