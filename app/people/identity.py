"""Who the faces of one photo are: a k-nearest-neighbour vote over each face's matches that have a subject, at the
"same person" threshold in force, then one assignment over all faces and candidate subjects so that one subject
goes to at most one face of the photo. Pure functions: no store, no service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_VOTERS = 5  # the k of the vote: a face's nearest matches that have a subject


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a searched face is: the enrolled subject whose matches agree best."""

    subject: str
    same_person: bool  # False: the subject went to another face of the same photo that matched it better
    confidence: float  # the subject's best match score
    threshold: float  # the "same person" threshold it was decided at


@dataclass(frozen=True, slots=True)
class Candidate:
    """One subject a face may be: its vote (the sum of the scores of its passing matches among the k nearest
    with a subject) and its best score."""

    subject: str
    vote: float
    best: float


def candidates(
    matches: Sequence[tuple[str | None, float]], threshold: float, voters: int = DEFAULT_VOTERS
) -> list[Candidate]:
    """The subjects a face may be, best first, from its matches as (subject, score) pairs in any order. Only the
    `voters` highest-scoring matches that have a subject vote, and only those at or over `threshold` count: a
    look-alike's single close match loses to several agreeing matches of the right person."""
    named = sorted(((s, sc) for s, sc in matches if s), key=lambda m: -m[1])[:voters]
    votes: dict[str, list[float]] = {}
    for subject, score in named:
        if score >= threshold and subject is not None:
            votes.setdefault(subject, []).append(score)
    found = [Candidate(subject, round(sum(scores), 6), max(scores)) for subject, scores in votes.items()]
    return sorted(found, key=lambda c: (-c.vote, -c.best, c.subject))


def assign(faces: Sequence[Sequence[Candidate]], threshold: float) -> list[Identity | None]:
    """One identity per face of a photo: the assignment of faces to candidate subjects with the largest total
    vote, each subject to at most one face (Hungarian method). A face whose candidates all went to faces that
    matched them better keeps its best candidate with same_person False; a face without candidates is None."""
    subjects = sorted({c.subject for row in faces for c in row})
    out: list[Identity | None] = [None] * len(faces)
    if not subjects:
        return out
    column = {s: j for j, s in enumerate(subjects)}
    gain = np.zeros((len(faces), len(subjects)))
    for i, row in enumerate(faces):
        for c in row:
            gain[i, column[c.subject]] = c.vote
    rows, cols = linear_sum_assignment(gain, maximize=True)
    given = {int(i): subjects[int(j)] for i, j in zip(rows, cols, strict=True) if gain[i, j] > 0}
    for i, row in enumerate(faces):
        if not row:
            continue
        if i in given:
            chosen = next(c for c in row if c.subject == given[i])
            out[i] = Identity(chosen.subject, True, round(chosen.best, 4), threshold)
        else:
            best = row[0]
            out[i] = Identity(best.subject, False, round(best.best, 4), threshold)
    return out


def identify_photo(
    faces: Sequence[Sequence[tuple[str | None, float]]], threshold: float, voters: int = DEFAULT_VOTERS
) -> list[Identity | None]:
    """Every face of one photo, from each face's matches as (subject, score) pairs."""
    return assign([candidates(m, threshold, voters) for m in faces], threshold)
