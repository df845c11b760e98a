"""The faces of the collection's own subjects that a calibration on them scores, bounded per subject and in all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class EnrolledSample:
    """The faces of the collection's subjects a calibration scores (`files`: face ids, `identities`: subjects)."""

    files: list[str]
    identities: list[str]
    subjects: int
    faces: int  # faces with a subject in the collection (len(files) of them are scored)


def sample_enrolled(faces: Iterable[tuple[str, str | None]], *, per_subject: int, max_faces: int) -> EnrolledSample:
    """Up to `per_subject` faces of each subject (the first in id order: ids are hashes, so an unbiased pick), at
    most `max_faces` in all, subjects in name order. `faces`: (id, subject or None) in id order, read once
    (memory: `per_subject` ids per subject)."""
    chosen: dict[str, list[str]] = {}
    count = 0
    for face_id, subject in faces:
        if subject is None:
            continue
        count += 1
        ids = chosen.setdefault(subject, [])
        if len(ids) < per_subject:
            ids.append(face_id)
    files: list[str] = []
    identities: list[str] = []
    for subject in sorted(chosen):
        for face_id in chosen[subject][: max(0, max_faces - len(files))]:
            files.append(face_id)
            identities.append(subject)
    return EnrolledSample(files=files, identities=identities, subjects=len(chosen), faces=count)
