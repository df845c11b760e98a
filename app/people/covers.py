"""Which face shows a person or a cluster: the one with the best quality score; faces indexed before quality was
recorded rank by their detector score, below any face that has a quality score."""

from __future__ import annotations

from app.store import Match

COVER_KEYS = ("quality", "det_score")  # the payload keys cover_rank reads


def cover_rank(face: Match) -> float:
    quality = face.payload.get("quality")
    if isinstance(quality, int | float):
        return float(quality)
    return float(face.payload.get("det_score") or 0.0) - 1.0  # below any quality score (in [0, 1])
