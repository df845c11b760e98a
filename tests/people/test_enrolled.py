"""The faces a calibration on the enrolled subjects scores: at most `per_subject` of a subject, `max_faces` in all,
faces without a subject left out, subjects in name order."""

from __future__ import annotations

from app.people import sample_enrolled


def test_faces_are_bounded_per_subject_and_in_all() -> None:
    faces = [("a1", "Bob"), ("a2", None), ("a3", "Alice"), ("a4", "Bob"), ("a5", "Bob"), ("a6", "Alice")]
    sample = sample_enrolled(iter(faces), per_subject=2, max_faces=10)
    assert (sample.files, sample.identities) == (["a3", "a6", "a1", "a4"], ["Alice", "Alice", "Bob", "Bob"])
    assert (sample.subjects, sample.faces) == (2, 5)
    capped = sample_enrolled(iter(faces), per_subject=2, max_faces=3)
    assert (capped.files, capped.identities) == (["a3", "a6", "a1"], ["Alice", "Alice", "Bob"])
    assert capped.faces == 5
