"""ErasureJournal: what survives a reopen (an unfinished erasure, a receipt), what is forgotten (anonymous erasures
once finished, receipts past their time), and that no subject name or file is written to it."""

from __future__ import annotations

from pathlib import Path

from app.store import ErasureJournal, PointQuery, erasure_key


def test_unfinished_erasures_and_receipts_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "erasures.sqlite3"
    journal = ErasureJournal(path)
    named = erasure_key(PointQuery(subject="Alice Example"))
    journal.begin(["a", "b"], named)
    anonymous = journal.begin(["c"])
    journal.close()  # as a kill would leave it: both unfinished

    journal = ErasureJournal(path)
    assert sorted((e.key, tuple(e.ids)) for e in journal.unfinished()) == sorted(
        [(named, ("a", "b")), (anonymous, ("c",))]
    )
    journal.finish(named)
    journal.finish(anonymous)
    assert journal.unfinished() == []
    receipt = journal.find(named)
    assert receipt is not None and receipt.finished and receipt.ids == ["a", "b"]
    assert journal.find(anonymous) is None  # nobody retries it: forgotten
    journal.close()
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(path.name))
    assert written and b"Alice" not in written


def test_receipts_are_forgotten_after_their_time(tmp_path: Path) -> None:
    journal = ErasureJournal(tmp_path / "erasures.sqlite3", keep_receipts=0.0)
    key = erasure_key(face_id="0a000000-0000-4000-8000-000000000001")
    journal.finish(journal.begin(["x"], key))
    journal.prune()
    assert journal.find(key) is None
    journal.close()


def test_keys_tell_queries_apart() -> None:
    keys = {
        erasure_key(PointQuery(subject="a")),
        erasure_key(PointQuery(file="a")),
        erasure_key(PointQuery(file="a", subject="a")),
        erasure_key(face_id="a"),
    }
    assert len(keys) == 4
