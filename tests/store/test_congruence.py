"""Congruence, in qdrant-client's manner (its tests run the same operations against local mode and a server and
compare the answers): the same operations against the embedded store (EdgeStore, Qdrant Edge) and the server store
(ServerStore over qdrant-client's local mode, which stands in for a Qdrant server: none can run here), each answer
compared with the other store's, not with a hand-written expectation.

Operations: upsert (new points, points without an origin as written before origins were recorded, an overwrite of
existing ids), count, search (top-k, a score threshold, a batch of queries), retrieve, find_ids by file / subject /
origin and their combinations, the full scan in pages (scroll), deletes by file, by subject and by origin, and
searches and scrolls narrowed by a FaceFilter (no subject, a cluster, no cluster, a minimum quality)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.store import (
    CollectionSpec,
    EdgeStore,
    FaceFilter,
    FacePoint,
    Origin,
    PointQuery,
    ServerStore,
    VectorStore,
    point_id,
)
from app.store.model import iter_pages

DIM = 64
SPEC = CollectionSpec(name="faces", dim=DIM, pack="test-pack:congruence")
SUBJECTS = ["Ann", "Bob", "Cy", None]
FILES = [f"/photos/{k:02d}.jpg" for k in range(12)]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def collection(n: int = 240, seed: int = 3) -> list[FacePoint]:
    """Faces of 12 files (several per file), four subjects (one: none), uploads, ingests and legacy points (no
    origin); clustered like faces of a few people, so that searches have near ties to get right."""
    rng = np.random.default_rng(seed)
    centres = unit(rng, 8)
    points = []
    for i in range(n):
        vector = 0.7 * centres[i % 8] + 0.3 * unit(rng, 1)[0]
        payload: dict[str, Any] = {"file": FILES[i % len(FILES)], "face": i % 5}
        subject = SUBJECTS[i % len(SUBJECTS)]
        if subject is not None:
            payload["subject"] = subject
        if i % 3 == 0:
            payload["origin"] = Origin.UPLOAD.value
        elif i % 3 == 1:
            payload["origin"] = Origin.INGEST.value  # i % 3 == 2: legacy, no origin recorded
        if i % 5:  # one face in five: indexed before quality was recorded
            payload["quality"] = round(float(rng.uniform()), 3)
        if subject is None and i % 2:
            payload["cluster"] = f"c{i % 3}"
        points.append(FacePoint(point_id(f"sha-{i}", i % 5), vector / np.linalg.norm(vector), payload))
    return points


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[VectorStore, VectorStore]]:
    edge = EdgeStore(tmp_path / "faces", SPEC)
    server = ServerStore(QdrantClient(location=":memory:"), SPEC)  # stands in for a Qdrant server
    yield edge, server
    edge.close()
    server.close()


def both(stores: tuple[VectorStore, VectorStore], call: Any) -> tuple[Any, Any]:
    return call(stores[0]), call(stores[1])


def assert_same_matches(edge: list[list[Any]], server: list[list[Any]]) -> None:
    assert len(edge) == len(server)
    for mine, theirs in zip(edge, server, strict=True):
        assert [m.id for m in mine] == [m.id for m in theirs]
        assert [m.payload for m in mine] == [m.payload for m in theirs]
        np.testing.assert_allclose([m.score for m in mine], [m.score for m in theirs], atol=1e-4)


FILTERS = [
    FaceFilter(no_subject=True),
    FaceFilter(cluster="c1"),
    FaceFilter(no_subject=True, no_cluster=True),
    FaceFilter(min_quality=0.5),
    FaceFilter(subject="Ann", min_quality=0.3),
    FaceFilter(no_subject=True, min_quality=0.8, origin=Origin.INGEST),
]


def holds(where: FaceFilter, payload: dict[str, Any]) -> bool:
    """What a filter means, written out (for the searches: the stores must agree AND be right)."""
    quality = payload.get("quality")
    return (
        (where.subject is None or payload.get("subject") == where.subject)
        and (not where.no_subject or payload.get("subject") is None)
        and (where.cluster is None or payload.get("cluster") == where.cluster)
        and (not where.no_cluster or payload.get("cluster") is None)
        and (where.min_quality is None or (quality is not None and quality >= where.min_quality))
        and (where.origin is not Origin.INGEST or payload.get("origin") != Origin.UPLOAD.value)
    )


def scan(store: VectorStore, limit: int) -> list[FacePoint]:
    return [p for page in iter_pages(store, limit=limit) for p in page.points]


def assert_congruent(stores: tuple[VectorStore, VectorStore], queries: np.ndarray) -> None:
    """Every read the two stores offer, compared."""
    edge, server = stores
    assert edge.count() == server.count()
    for limit, threshold in ((1, None), (10, None), (50, 0.5)):
        assert_same_matches(*both(stores, lambda s: s.search(queries, limit=limit, threshold=threshold, hnsw_ef=128)))  # noqa: B023
    for where in FILTERS:
        mine_f, theirs_f = both(stores, lambda s: s.search(queries, limit=10, threshold=None, hnsw_ef=128, where=where))  # noqa: B023
        assert_same_matches(mine_f, theirs_f)
        selected = sum(holds(where, p.payload) for p in scan(edge, 100))
        for row in mine_f:  # filtered inside the search: every answer holds, and the limit is filled
            assert all(holds(where, m.payload) for m in row), where
            assert len(row) == min(10, selected), where
        listed = both(stores, lambda s: sorted(m.id for m in s.scroll(where, offset=None, limit=1000)[0]))  # noqa: B023
        assert listed[0] == listed[1] and len(listed[0]) == selected, where
    mine, theirs = scan(edge, 37), scan(server, 37)  # pages smaller than the collection
    assert [p.id for p in mine] == [p.id for p in theirs]  # the same points in the same (id) order
    assert [p.payload for p in mine] == [p.payload for p in theirs]
    np.testing.assert_allclose(np.array([p.vector for p in mine]), np.array([p.vector for p in theirs]), atol=1e-6)
    ids = [p.id for p in mine]
    sample = ids[::7] + ["00000000-0000-0000-0000-000000000000"]  # and an id neither has
    retrieved = both(stores, lambda s: sorted((m.id, repr(sorted(m.payload.items()))) for m in s.retrieve(sample)))
    assert retrieved[0] == retrieved[1] and len(retrieved[0]) == len(sample) - 1
    for query in [
        *(PointQuery(file=f) for f in FILES[:4]),
        *(PointQuery(subject=s) for s in SUBJECTS if s is not None),
        *(PointQuery(file=f, origin=o) for f in FILES[:3] for o in Origin),
        *(PointQuery(subject="Ann", origin=o) for o in Origin),
        PointQuery(file=FILES[1], subject="Bob"),
        PointQuery(file="/nowhere.jpg"),
    ]:
        found = both(stores, lambda s: sorted(s.find_ids(query)))  # noqa: B023
        assert found[0] == found[1], query


def test_the_two_stores_answer_alike(stores: tuple[VectorStore, VectorStore]) -> None:
    points = collection()
    queries = np.array([p.vector for p in points[::40]] + list(unit(np.random.default_rng(9), 4)))
    for store in stores:
        store.upsert(points)
    assert stores[0].count() == len(points)
    assert_congruent(stores, queries)

    # An overwrite: the same ids with new vectors and payloads (a file replaced, a subject renamed).
    rng = np.random.default_rng(11)
    again = [FacePoint(p.id, unit(rng, 1)[0], {**p.payload, "subject": "Dee"}) for p in points[:30]]
    for store in stores:
        store.upsert(again)
    assert_congruent(stores, queries)

    # Deletes as the service makes them: the ids a query finds (by file, by subject, by file and origin).
    for query in (PointQuery(file=FILES[0]), PointQuery(subject="Cy"), PointQuery(file=FILES[5], origin=Origin.INGEST)):
        found = both(stores, lambda s: sorted(s.find_ids(query)))  # noqa: B023
        assert found[0] == found[1] and found[0], query
        for store in stores:
            store.delete(found[0])
            store.flush()
        assert both(stores, lambda s: s.find_ids(query)) == ([], [])  # noqa: B023
        assert_congruent(stores, queries)
    assert 0 < stores[0].count() < len(points)


def test_the_indexed_embedded_store_still_answers_as_the_server(tmp_path: Path) -> None:
    """Once the embedded store has built its HNSW and int8 segments (INDEX_THRESHOLD 100 here, so a build is due),
    its top-k still agree with the server's local mode (exact) on this small, clustered collection."""
    spec = CollectionSpec(name="faces", dim=DIM, pack=SPEC.pack, index_threshold=100, max_segment_points=100)
    edge, server = EdgeStore(tmp_path / "faces", spec), ServerStore(QdrantClient(location=":memory:"), spec)
    try:
        points = collection(seed=5)
        for store in (edge, server):
            store.upsert(points)
        assert edge.wait_indexed(120) and edge.info().unindexed == 0
        queries = np.array([p.vector for p in points[::30]])
        for limit in (1, 10):
            mine, theirs = (s.search(queries, limit=limit, threshold=None, hnsw_ef=128) for s in (edge, server))
            for a, b in zip(mine, theirs, strict=True):
                assert [m.id for m in a] == [m.id for m in b]
                np.testing.assert_allclose([m.score for m in a], [m.score for m in b], atol=1e-4)  # rescored
        for where in FILTERS:  # the filter applied inside the HNSW search too
            mine, theirs = (
                s.search(queries, limit=5, threshold=None, hnsw_ef=128, where=where) for s in (edge, server)
            )
            for a, b in zip(mine, theirs, strict=True):
                assert [m.id for m in a] == [m.id for m in b], where
                assert all(holds(where, m.payload) for m in a), where
        assert edge.count() == server.count() == len(points)
        assert sorted(edge.find_ids(PointQuery(subject="Ann"))) == sorted(server.find_ids(PointQuery(subject="Ann")))
    finally:
        edge.close()
        server.close()


def test_a_search_asked_for_some_keys_answers_those_alike(stores: tuple[VectorStore, VectorStore]) -> None:
    """`keys`: each match's payload holds only those keys (the ones it has), on both backends alike."""
    points = collection()
    for store in stores:
        store.upsert(points)
    queries = np.stack([points[i].vector for i in (0, 5, 13)])
    edge, server = both(
        stores, lambda s: s.search(queries, limit=6, threshold=None, hnsw_ef=128, keys=("file", "subject"))
    )
    assert_same_matches(edge, server)
    for row in edge:
        assert row and all(set(m.payload) <= {"file", "subject"} and "file" in m.payload for m in row)
    full, _ = both(stores, lambda s: s.search(queries, limit=6, threshold=None, hnsw_ef=128))
    assert any(len(m.payload) > 2 for row in full for m in row)  # without `keys`, the whole payload
