"""The identity decision as pure functions: the k-nearest-neighbour vote at the threshold, and the assignment that
gives one subject to at most one face of a photo."""

from __future__ import annotations

import pytest

from app.people import Candidate, assign, candidates, identify_photo

T = 0.4


def test_vote_counts_only_passing_matches_with_a_subject() -> None:
    found = candidates([("Alice", 0.6), (None, 0.9), ("Bob", 0.39), ("Alice", 0.5)], T)
    assert found == [Candidate("Alice", 1.1, 0.6)]
    assert candidates([(None, 0.9), ("Bob", 0.1)], T) == []


def test_several_agreeing_matches_beat_one_close_look_alike() -> None:
    matches = [("Look-alike", 0.70), ("Alice", 0.62), ("Alice", 0.60), ("Alice", 0.55)]
    assert [c.subject for c in candidates(matches, T)] == ["Alice", "Look-alike"]
    assert identify_photo([matches], T)[0].subject == "Alice"  # type: ignore[union-attr]


def test_only_the_k_nearest_named_matches_vote() -> None:
    matches = [("Bob", 0.9), ("Alice", 0.5), ("Alice", 0.5), ("Alice", 0.5)]
    assert candidates(matches, T, voters=1) == [Candidate("Bob", 0.9, 0.9)]
    assert candidates(matches, T, voters=4)[0].subject == "Alice"


def test_one_subject_per_face_of_a_photo() -> None:
    # Both faces look most like Alice; the first matches her better, the second goes to its next candidate.
    first = [("Alice", 0.8), ("Alice", 0.7)]
    second = [("Alice", 0.5), ("Bob", 0.45)]
    one, two = identify_photo([first, second], T)
    assert one is not None and two is not None
    assert (one.subject, one.same_person, one.confidence) == ("Alice", True, 0.8)
    assert (two.subject, two.same_person) == ("Bob", True)


def test_a_face_whose_only_candidate_went_elsewhere_is_not_the_same_person() -> None:
    one, two = identify_photo([[("Alice", 0.8)], [("Alice", 0.5)]], T)
    assert one is not None and one.same_person
    assert two is not None and (two.subject, two.same_person, two.threshold) == ("Alice", False, T)


def test_assignment_maximises_the_total_not_face_by_face() -> None:
    # Greedy (best first) would give Alice to face 0 and leave face 1 with nothing; the assignment gives
    # face 0 Bob and face 1 Alice (1.4 + 0.5 > 1.5 + 0).
    faces = [[Candidate("Alice", 1.5, 0.8), Candidate("Bob", 1.4, 0.7)], [Candidate("Alice", 0.5, 0.5)]]
    zero, one = assign(faces, T)
    assert zero is not None and one is not None
    assert (zero.subject, one.subject) == ("Bob", "Alice") and zero.same_person and one.same_person


@pytest.mark.parametrize("faces", [[], [[]], [[(None, 0.9)], []]])
def test_no_candidate_is_none(faces: list[list[tuple[str | None, float]]]) -> None:
    assert identify_photo(faces, T) == [None] * len(faces)
