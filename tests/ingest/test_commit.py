"""The ingest commit buffer: where it cuts the pending files into upserts, and what a look at it costs."""

from __future__ import annotations

import numpy as np

from app.ingest.commit import CommitBuffer, Entry, EntryKind
from app.ingest.model import FileRecord, FileStatus
from app.store import FacePoint


class CountedPoints(tuple[FacePoint, ...]):
    """A file's points that count how often their number is asked for."""

    asked = 0

    def __len__(self) -> int:
        CountedPoints.asked += 1
        return super().__len__()


def entry(name: str, faces: int) -> Entry:
    points = CountedPoints(
        FacePoint(id=f"{name}-{i}", vector=np.zeros(4, np.float32), payload={}) for i in range(faces)
    )
    record = FileRecord(path=name, size=1, mtime_ns=1, content_hash=None, status=FileStatus.DONE, faces=faces)
    return Entry(record=record, kind=EntryKind.INGESTED if faces else EntryKind.NO_FACE, points=points)


def buffer(batch: int) -> CommitBuffer:
    return CommitBuffer(batch=batch, write=lambda entries: None, written=lambda entries: None, interval=3600.0)


def names(entries: list[Entry]) -> list[str]:
    return [e.record.path for e in entries]


def test_an_upsert_takes_the_leading_files_that_reach_the_batch_and_never_splits_a_file() -> None:
    commits = buffer(batch=6)
    commits.add(entry("a", 2), entry("b", 0), entry("c", 2))
    assert commits.take(force=False) == []  # 4 points: not yet
    commits.add(entry("d", 3), entry("e", 1))
    assert names(commits.take(force=False)) == ["a", "b", "c", "d"]  # 7 points in 5 files: d is not split
    assert commits.take(force=False) == []  # e's 1 point is left
    commits.add(entry("f", 5))
    assert names(commits.take(force=False)) == ["e", "f"]  # the count went down by what was taken
    commits.add(entry("g", 1))
    assert names(commits.take(force=True)) == ["g"]


def test_a_cleared_buffer_counts_from_nothing() -> None:
    commits = buffer(batch=5)
    commits.add(entry("a", 4))
    assert [e.record.path for e in commits.clear()] == ["a"]
    commits.add(entry("b", 4))
    assert commits.take(force=False) == []  # 4 points, not 8


def test_a_look_at_a_buffer_not_yet_due_does_not_count_its_files_again() -> None:
    """Every inference worker looks after every image (commit_due): counting the pending files' points at each
    look made a run's cost grow with --batch (1,024 files by default), most of it holding the GIL."""
    commits = buffer(batch=10_000)
    CountedPoints.asked = 0
    for i in range(200):
        commits.add(entry(f"f{i}", 1))
        assert commits.take(force=False) == []
    assert CountedPoints.asked <= 2 * 200  # once as added (and once as taken); before: 20,100
