"""People over both store backends with the same test body: the embedded store (real Qdrant Edge) and a server
store on qdrant-client's local mode (standing in for a Qdrant server, which cannot run here). Synthetic vectors:
the subjects logic never looks at pixels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.config import Settings
from app.engine import FaceEngine
from app.errors import Conflict, InvalidRequest, NotFound
from app.heads import HeadRegistry
from app.people import People, PeopleFaceService, PeopleState
from app.people import people as people_module
from app.store import (
    CollectionSpec,
    EdgeStore,
    ErasureJournal,
    FaceFilter,
    FacePoint,
    Origin,
    ServerStore,
    ThumbnailStore,
    point_id,
)

DIM = 512


@pytest.fixture(params=["edge", "server"])
def people(request: pytest.FixtureRequest, tmp_path: Path, engine: FaceEngine) -> Iterator[People]:
    spec = CollectionSpec(name="faces", dim=DIM, pack="test-pack:abc")
    store = (
        EdgeStore(tmp_path / "faces", spec, background_index=False)
        if request.param == "edge"
        else ServerStore(QdrantClient(location=":memory:"), spec)
    )
    service = PeopleFaceService(
        settings=Settings(state_dir=tmp_path),
        engine=engine,
        heads=HeadRegistry(),
        store=store,
        thumbs=ThumbnailStore(tmp_path / "thumbs"),
        erasures=ErasureJournal(tmp_path / "erasures.sqlite3"),
    )
    state = PeopleState(tmp_path / "people.sqlite")
    yield People(service=service, state=state, state_dir=tmp_path, collection="faces", fingerprint="fp", pack="bundled")
    state.close()
    store.close()


def fill(
    people: People, subjects: dict[str | None, int], origin: Origin = Origin.UPLOAD
) -> dict[str | None, list[str]]:
    rng = np.random.default_rng(0)
    ids: dict[str | None, list[str]] = {}
    points = []
    for subject, n in subjects.items():
        for i in range(n):
            pid = point_id(f"{subject}-{origin}", i)
            payload = {"subject": subject, "file": f"{subject}-{i}.jpg", "origin": origin.value, "det_score": i / 100}
            payload["ingested_at"] = 1000.0 + i
            points.append(FacePoint(pid, rng.standard_normal(DIM).astype(np.float32), payload))
            ids.setdefault(subject, []).append(pid)
    people.service.store.upsert(points)
    return ids


def counts(people: People) -> dict[str, int]:
    return {name: s.faces for name, s in people.summaries().items()}


def test_summaries_listing_and_filters(people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(people_module, "SCAN_PAGE", 7)  # counted across several pages
    ids = fill(people, {"Alice": 12, "Bob": 5, None: 4})
    fill(people, {"Alice": 2}, origin=Origin.INGEST)
    assert counts(people) == {"Alice": 14, "Bob": 5}
    alice = people.summary("Alice")
    assert alice.cover == ids["Alice"][11] and (alice.created, alice.updated) == (1000.0, 1011.0)
    page = people.subjects(search="bo", offset=0, limit=10)
    assert [s.name for s in page.subjects] == ["Bob"] and page.total == 1

    def listed(where: FaceFilter) -> set[str]:
        seen: set[str] = set()
        after = None
        while True:
            page = people.faces(where, after=after, limit=4)
            seen |= {f.id for f in page.faces}
            if page.next is None:
                return seen
            after = page.next

    assert listed(FaceFilter(no_subject=True)) == set(ids[None])
    assert listed(FaceFilter(subject="Bob")) == set(ids["Bob"])
    assert len(listed(FaceFilter(subject="Alice", origin=Origin.UPLOAD))) == 12
    assert len(listed(FaceFilter(origin=Origin.INGEST))) == 2
    assert listed(FaceFilter(file="Bob-3.jpg")) == {ids["Bob"][3]}


def test_rename_merge_move_delete(people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(people_module, "MOVE_PAGE", 3)  # a rename of several pages
    ids = fill(people, {"Alice": 10, "Bob": 4, None: 1})
    assert people.rename("Alice", "Alicia").faces == 10
    assert counts(people) == {"Alicia": 10, "Bob": 4}
    assert people.rename("Alice", "Alicia").faces == 10  # retried: answered as the first
    with pytest.raises(Conflict):
        people.rename("Bob", "Alicia")
    with pytest.raises(NotFound):
        people.rename("Nobody", "Somebody")
    assert people.merge("Alicia", "Bob").faces == 14
    assert counts(people) == {"Alicia": 14}
    assert [m.done for m in people.state._moves("")] == [True, True]

    people.set_face_subject(ids[None][0], "Carol")
    people.set_face_subject(ids["Bob"][0], None)
    assert counts(people) == {"Alicia": 13, "Carol": 1}
    with pytest.raises(InvalidRequest):
        people.set_face_subject(ids["Bob"][1], "a/b")
    assert people.delete_subject("Carol") == [ids[None][0]]
    assert not people.service.get_faces([ids[None][0]])
    assert people.delete_subject("Carol") == [ids[None][0]]  # sent again: answered as the first (erasure receipt)
    with pytest.raises(NotFound):
        people.delete_subject("Nobody")


def test_an_interrupted_move_is_finished_at_start_and_shown_whole_meanwhile(people: People) -> None:
    fill(people, {"Alice": 6})
    move = people.state.begin_move(people_module.MoveKind.MERGE, "Alice", "Alicia")
    first = [f.id for f in people.faces(FaceFilter(subject="Alice"), after=None, limit=2).faces]
    people.service.set_subject(first, "Alicia")  # the crash came after one page
    assert counts(people) == {"Alice": 4, "Alicia": 2}  # mixed in the store: what start-up must finish
    assert people.finish_pending() == 1
    assert counts(people) == {"Alicia": 6}
    assert people.state.pending_moves() == [] and people.state.last_done("Alice", "Alicia") is not None
    assert move.id == people.state.last_done("Alice", "Alicia").id  # type: ignore[union-attr]


def test_readers_see_the_new_name_for_every_face_while_a_merge_runs(
    people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(people_module, "MOVE_PAGE", 2)
    fill(people, {"Alice": 5, "Alicia": 1})
    seen: list[dict[str, int]] = []
    shown: list[set[str | None]] = []
    original = people.service.set_subject

    def set_subject(ids: list[str], subject: str | None) -> None:
        original(ids, subject)  # a page moved; the rest still carry the old name in the store
        seen.append(counts(people))
        shown.append({f.payload["subject"] for f in people.faces(FaceFilter(), after=None, limit=100).faces})

    monkeypatch.setattr(people.service, "set_subject", set_subject)
    people.merge("Alicia", "Alice")
    assert len(seen) == 3 and all(c == {"Alicia": 6} for c in seen) and all(s == {"Alicia"} for s in shown)
