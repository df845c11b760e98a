"""The stored feedback as labelled pairs (thumbs up: genuine, down: impostor), scored from the stored vectors now:
what calibration on feedback measures. Moved out of app.people.people (the module size limit)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from app.calibration import Pairs
from app.people.searched import PeopleFaceService
from app.people.state import PeopleState

PAGE = 500  # feedback records read at a time


@dataclass(slots=True)
class FeedbackPairs:
    """The stored feedback as labelled pairs, scored from the stored vectors."""

    pairs: Pairs
    left_out: dict[str, str] = field(default_factory=dict)


def feedback_pairs(state: PeopleState, service: PeopleFaceService) -> FeedbackPairs:
    """Every feedback as a labelled pair, scored from the stored vectors now (pairs whose faces were erased since
    are left out)."""
    names: list[str] = []
    scores: list[float] = []
    same: list[bool] = []
    left_out: dict[str, str] = {}
    after = 0
    while batch := state.feedback(after=after, limit=PAGE):
        after = batch[-1].id
        face_ids = {r.match_id for r in batch} | {r.query_face for r in batch if r.query_face}
        vectors = service.face_vectors(sorted(face_ids))
        kept = state.feedback_vectors([r.id for r in batch if r.query_face is None])
        for record in batch:
            query = vectors.get(record.query_face) if record.query_face else kept.get(record.id)
            match = vectors.get(record.match_id)
            if query is None or match is None:
                left_out[f"feedback {record.id}"] = "a face of the pair was erased"
                continue
            names.extend([record.query, record.match_id])
            scores.append(cosine(query, match))
            same.append(record.same_person)
    n = len(scores)
    pairs = Pairs(
        files=names,
        first=np.arange(0, 2 * n, 2),
        second=np.arange(1, 2 * n, 2),
        scores=np.asarray(scores, np.float64),
        same=np.asarray(same, bool),
    )
    return FeedbackPairs(pairs, left_out)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na and nb else 0.0
