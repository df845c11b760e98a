"""Clusters of unknown faces (app.people.clusters) over both store backends with the same test body: the embedded
store (real Qdrant Edge) and a server store on qdrant-client's local mode (standing in for a Qdrant server, which
cannot run here). Synthetic vectors, identities with noise around centres (the clustering never looks at pixels;
tests/api/test_clusters.py runs it on real faces): grouping, incremental runs, resume after a stop and after a
kill between the journal and the payloads, naming, merging, taking a face out, erasure."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.config import Settings
from app.engine import FaceEngine
from app.errors import InvalidRequest, NotFound
from app.heads import HeadRegistry
from app.ingest.model import RunOutcome
from app.people import ClusterParams, ClusterRun, Clusters, ClusterState, People, PeopleFaceService, PeopleState
from app.people import clusters as clusters_module
from app.people import clusters_run as run_module
from app.people.clusters_run import CLUSTER_KEY, CORE_KEY, EXCLUDED_KEY
from app.people.clusters_state import ClusterMoveKind
from app.store import (
    CollectionSpec,
    EdgeStore,
    ErasureJournal,
    FaceFilter,
    FacePoint,
    ServerStore,
    ThumbnailStore,
    point_id,
)

DIM = 512
PARAMS = ClusterParams(min_faces=3, max_distance=0.6)


@dataclass
class World:
    people: People
    clusters: Clusters
    state: ClusterState
    rng: np.random.Generator
    centres: np.ndarray
    made: int = 0

    @property
    def service(self) -> PeopleFaceService:
        return self.people.service

    def add(self, identity: int, n: int, *, subject: str | None = None) -> list[str]:
        """n faces around identity's centre (same-identity cosine ~0.56, others ~0)."""
        return [self.add_near(self.centres[identity], 0.75, subject=subject) for _ in range(n)]

    def add_near(self, target: np.ndarray, weight: float, *, subject: str | None = None) -> str:
        """One face: weight x target + noise (cosine ~weight with the target)."""
        noise = self.rng.standard_normal(DIM).astype(np.float32)
        vector = weight * target + np.sqrt(1 - weight**2) * noise / np.linalg.norm(noise)
        face = point_id(f"face-{self.made}", 0)
        self.made += 1
        payload: dict[str, object] = {"file": f"photo-{self.made}.jpg", "det_score": 0.5 + self.made / 1e4}
        if subject:
            payload["subject"] = subject
        self.service.store.upsert([FacePoint(face, (vector / np.linalg.norm(vector)).astype(np.float32), payload)])
        return face

    def run(self, job: str = "job-1") -> ClusterRun:
        run = self.clusters.job(job, lambda _: None)
        assert run.run() is RunOutcome.COMPLETED
        return run

    def membership(self) -> dict[str, str]:
        found: dict[str, str] = {}
        offset = None
        while True:
            faces, offset = self.service.list_faces(FaceFilter(), offset=offset, limit=500, keys=[CLUSTER_KEY])
            found.update({f.id: f.payload[CLUSTER_KEY] for f in faces if f.payload.get(CLUSTER_KEY)})
            if offset is None:
                return found


@pytest.fixture(params=["edge", "server"])
def world(request: pytest.FixtureRequest, tmp_path: Path, engine: FaceEngine) -> Iterator[World]:
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
    people_state = PeopleState(tmp_path / "people.sqlite")
    people = People(
        service=service, state=people_state, state_dir=tmp_path, collection="faces", fingerprint="fp", pack="x"
    )
    state = ClusterState(tmp_path / "people.sqlite")
    clusters = Clusters(service=service, state=state, params=PARAMS)
    people.clusters = clusters
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((8, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    yield World(people, clusters, state, rng, centres)
    state.close()
    people_state.close()
    store.close()


def groups(world: World) -> list[set[str]]:
    by: dict[str, set[str]] = {}
    for face, cluster in world.membership().items():
        by.setdefault(cluster, set()).add(face)
    return sorted(by.values(), key=lambda s: min(s))


def test_identities_become_clusters_and_named_faces_stay_out(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "SAMPLES", 2)
    a, b, c = world.add(0, 12), world.add(1, 7), world.add(2, 5)
    alone = world.add(3, 1)  # one face of a person: no cluster
    named = world.add(0, 4, subject="Alice")  # identity 0 too, but already named: never clustered
    run = world.run()
    assert sorted(map(sorted, groups(world))) == sorted(map(sorted, [set(a), set(b), set(c)]))
    assert run.counts.new_clusters == 3 and run.counts.clustered == 24
    assert not set(world.membership()) & set(alone + named)

    page = world.clusters.page(offset=0, limit=10, min_size=0)
    assert [r.size for r in page.clusters] == [12, 7, 5]  # largest first
    assert page.total == 3 and page.unclustered == 1
    first = page.clusters[0]
    assert set(first.samples) <= set(a) and len(first.samples) == 2
    assert first.cohesion is not None and 0.6 < first.cohesion < 1.0
    assert world.clusters.page(offset=0, limit=10, min_size=6).total == 2
    view = world.clusters.get(first.id)
    assert {f.id for f in view.faces} == set(a)


def test_rerun_keeps_ids_and_new_faces_join(world: World) -> None:
    a, b = world.add(0, 6), world.add(1, 6)
    world.run("job-1")
    before = world.membership()
    more_a = world.add(0, 3)
    new_person = world.add(4, 4)
    run = world.run("job-2")
    after = world.membership()
    assert {f: after[f] for f in before} == before  # nobody renamed or reshuffled
    assert {after[f] for f in more_a} == {before[a[0]]}  # new faces of a known cluster joined it
    assert len({after[f] for f in new_person}) == 1 and after[new_person[0]] not in before.values()
    assert run.counts.new_clusters == 1 and run.counts.clustered == 7
    assert before[b[0]] != before[a[0]]


def test_border_face_joins_in_pass_two(world: World) -> None:
    core = world.add(0, 8)
    # Cosine ~0.5 with one face of the cluster, ~0.28 with the others: one neighbour within 0.6, so not a core
    # face (3 needed), but within reach of a core face.
    border = world.add_near(world.service.face_vectors([core[0]])[core[0]], 0.5)
    lonely = world.add_near(world.centres[0], 0.3)  # ~0.22 with the faces of identity 0: out of reach
    world.run()
    member = world.membership()
    assert member.get(border) == member[core[0]] and lonely not in member
    assert world.state.cluster_of(border) == member[core[0]]
    assert world.service.get_faces([border])[0].payload[CORE_KEY] is False


def test_stop_then_resume_continues_without_loss(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    faces = [f for i in range(5) for f in world.add(i, 6)]
    stopped: list[int] = []

    def stop_after_first_page(run: object) -> None:
        assert isinstance(run, ClusterRun)
        stopped.append(run.counts.faces_seen)
        run.stop()

    world.clusters.params = ClusterParams(min_faces=3, max_distance=0.6, page=4)
    first = world.clusters.job("job-1", stop_after_first_page)
    assert first.run() is RunOutcome.STOPPED
    cursor = world.state.cursor("job-1")
    assert cursor is not None and (cursor.pass_no, cursor.offset) != (1, None)  # progress recorded durably
    partial = world.membership()
    assert partial and len(partial) < len(faces)

    resumed = world.clusters.job("job-1", lambda _: None)  # a new process would build it the same way
    assert resumed.counts.faces_seen == stopped[0]  # the counts carry on from the cursor
    assert resumed.run() is RunOutcome.COMPLETED
    done = world.membership()
    assert {f: done[f] for f in partial} == partial  # nothing done before was redone or moved
    assert set(done) == set(faces) and len(groups(world)) == 5
    assert world.state.cursor("job-1") is None
    assert world.state.clustered_count() == len(faces)  # the journal holds each face once


def test_kill_between_journal_and_payload_is_rolled_forward(world: World) -> None:
    faces = world.add(0, 5)
    world.run()
    cluster = world.membership()[faces[0]]
    late = world.add(0, 2)
    # What a kill -9 right after the journal write leaves: recorded in people.sqlite, not in the payloads.
    world.state.add_members([(f, cluster, True) for f in late])
    assert not set(late) & set(world.membership())
    assert world.clusters.finish_pending() == 0  # start-up: the memberships are written (no move was pending)
    assert {world.membership()[f] for f in late} == {cluster}
    assert not world.state.pending_members()


def test_name_turns_a_cluster_into_a_subject(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clusters_module, "MOVE_PAGE", 2)  # several pages
    a, b = world.add(0, 5), world.add(1, 4)
    world.add(2, 2, subject="Bob")
    world.run()
    member = world.membership()
    world.service.update_faces([a[4]], {"subject": "Eve"})  # indexed again with a subject since the run
    assert world.clusters.name(member[a[0]], "  Alice ") == "Alice"
    assert world.people.summary("Alice").faces == 4 and world.people.summary("Eve").faces == 1
    assert not set(a) & set(world.membership())  # Eve's face too: it left the cluster it was in
    with pytest.raises(NotFound):
        world.clusters.get(member[a[0]])
    world.clusters.name(member[b[0]], "Bob")  # joins the existing subject
    assert world.people.summary("Bob").faces == 6
    assert world.clusters.page(offset=0, limit=10, min_size=0).total == 0
    world.add(0, 3)
    world.run("job-2")  # named faces are no longer unknown: new faces of that person make a new cluster
    assert world.clusters.page(offset=0, limit=10, min_size=0).total == 1


def test_name_cut_short_is_finished_at_start(world: World) -> None:
    a = world.add(0, 5)
    world.run()
    cluster = world.membership()[a[0]]
    world.state.begin_cluster_move(cluster, ClusterMoveKind.SUBJECT, "Alice")
    world.service.update_faces(a[:2], {"subject": "Alice", CLUSTER_KEY: None})  # killed after two faces
    assert world.clusters.finish_pending() == 1
    assert world.people.summary("Alice").faces == 5 and world.state.cluster(cluster) is None


def test_merge_and_bad_requests(world: World) -> None:
    a, b = world.add(0, 5), world.add(1, 4)
    world.run()
    member = world.membership()
    ca, cb = member[a[0]], member[b[0]]
    merged = world.clusters.merge(cb, into=ca)
    assert merged.record.id == ca and merged.record.size == 9 and {f.id for f in merged.faces} == set(a + b)
    assert world.state.cluster(cb) is None
    with pytest.raises(NotFound, match="no cluster"):
        world.clusters.merge(cb, into=ca)
    with pytest.raises(InvalidRequest, match="into itself"):
        world.clusters.merge(ca, into=ca)
    with pytest.raises(NotFound, match="to merge into"):
        world.clusters.merge(ca, into="0123456789abcdef")
    with pytest.raises(InvalidRequest, match="characters a name may not have"):
        world.clusters.name(ca, "a/b")
    with pytest.raises(NotFound):
        world.clusters.take_out(ca, point_id("never", 0))


def test_taken_out_face_stays_out(world: World) -> None:
    a = world.add(0, 6)
    world.run()
    cluster = world.membership()[a[0]]
    after = world.clusters.take_out(cluster, a[0])
    assert after.record.size == 5 and a[0] not in {f.id for f in after.faces}
    payload = world.service.get_faces([a[0]])[0].payload
    assert payload.get(EXCLUDED_KEY) is True and not payload.get(CLUSTER_KEY) and not payload.get(CORE_KEY)
    world.add(0, 2)
    world.run("job-2")
    assert a[0] not in world.membership()  # a re-run never puts it back
    assert world.clusters.get(cluster).record.size == 7


def test_erasure_and_subject_move_leave_no_gone_face(world: World) -> None:
    a = world.add(0, 6)
    world.run()
    cluster = world.membership()[a[0]]
    samples = world.clusters.page(offset=0, limit=10, min_size=0).clusters[0].samples
    gone = samples[0]
    world.service.delete_face(gone)  # as DELETE /api/faces/{id} does, then the feedback and clusters forget it
    world.people.forget([gone])
    world.people.set_face_subject(a[-1] if a[-1] != gone else a[-2], "Carol")
    listed = world.clusters.page(offset=0, limit=10, min_size=0).clusters[0]
    assert listed.size == 4 and gone not in listed.samples
    view = world.clusters.get(cluster)
    assert gone not in {f.id for f in view.faces} and len(view.faces) == 4


def test_growth_is_one_search_per_page_never_all_pairs(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    faces = [f for i in range(4) for f in world.add(i, 10)]
    calls: list[int] = []
    original = world.service.neighbours

    def counted(vectors: np.ndarray, **kwargs: Any) -> Any:
        calls.append(len(vectors))
        assert kwargs["limit"] == 8 and kwargs["where"] == FaceFilter(no_subject=True)
        return original(vectors, **kwargs)

    monkeypatch.setattr(world.service, "neighbours", counted)
    world.clusters.params = ClusterParams(min_faces=3, max_distance=0.6, neighbours=8)
    run = world.clusters.job("job-1", lambda _: None)
    assert run.run() is RunOutcome.COMPLETED
    assert len(groups(world)) == 4
    assert sum(calls) == run.counts.faces_seen and max(calls) <= run_module.PAGE
    assert sum(calls) <= 3 * len(faces)  # each face searched a bounded number of times


def test_concurrent_action_waits_for_the_page(world: World) -> None:
    a = world.add(0, 5)
    world.run()
    cluster = world.membership()[a[0]]
    order: list[str] = []

    def take_out() -> None:
        world.clusters.take_out(cluster, a[0])
        order.append("out")

    with world.clusters.lock:
        worker = threading.Thread(target=take_out)
        worker.start()
        worker.join(0.2)
        order.append("page done")
    worker.join(30)
    assert order == ["page done", "out"]


@pytest.mark.parametrize("every", [0, 8])
def test_index_rebuilt_every_n_faces_written(world: World, monkeypatch: pytest.MonkeyPatch, every: int) -> None:
    """Payload updates move points out of their indexed segment (Qdrant Edge): a run rebuilds the index every
    `reindex_every` faces it writes, and at its end (0: never)."""
    faces = [f for i in range(5) for f in world.add(i, 6)]
    builds: list[int] = []

    def build() -> bool:
        builds.append(len(world.membership()))  # faces written when the build runs
        return True

    monkeypatch.setattr(world.service, "build_index", build)
    world.clusters.params = ClusterParams(min_faces=3, max_distance=0.6, page=4, reindex_every=every)
    world.run()
    assert len(world.membership()) == len(faces)
    if every == 0:
        assert builds == []
    else:
        assert builds and builds[-1] == len(faces)  # the last one after the last write
        assert all(b - a >= every for a, b in zip([0, *builds[:-2]], builds[:-1], strict=True))


def test_unclustered_count_is_reused_until_clusters_change(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /api/clusters counts the unclustered faces with a scan of their ids: not on every listing."""
    world.add(0, 5)
    scans: list[int] = []
    original = world.service.list_faces

    def counted(where: FaceFilter, **kwargs: Any) -> Any:
        if where == run_module.UNCLUSTERED and kwargs.get("keys") == ():
            scans.append(1)
        return original(where, **kwargs)

    monkeypatch.setattr(world.service, "list_faces", counted)
    assert world.clusters.page(offset=0, limit=5, min_size=0).unclustered == 5
    world.add(1, 1)
    assert world.clusters.page(offset=0, limit=5, min_size=0).unclustered == 5 and len(scans) == 1  # reused
    world.run()  # clusters changed: counted again
    assert world.clusters.page(offset=0, limit=5, min_size=0).unclustered == 1 and len(scans) == 2
    world.add(2, 1)
    monkeypatch.setattr(clusters_module, "UNCLUSTERED_TTL", 0.0)  # past its age: counted again
    assert world.clusters.page(offset=0, limit=5, min_size=0).unclustered == 2 and len(scans) == 3
