"""VectorStore congruence: one test body against both backends.

EdgeStore is the real Qdrant Edge engine. ServerStore runs against qdrant-client's local mode, which stands in
for a Qdrant server here (no server can run on this machine): the same client API, so the same code path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.errors import PackMismatch, StoreUnavailable
from app.store import CollectionSpec, EdgeStore, FacePoint, ServerStore, VectorStore, point_id

DIM = 64
SPEC = CollectionSpec(name="faces", dim=DIM, pack="test-pack:abc")


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=["edge", "server"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., VectorStore]]:
    opened: list[VectorStore] = []
    client = QdrantClient(location=":memory:") if request.param == "server" else None

    def make(spec: CollectionSpec = SPEC, **kwargs: object) -> VectorStore:
        store: VectorStore
        if client is None:
            store = EdgeStore(tmp_path / spec.name, spec, **kwargs)  # type: ignore[arg-type]
        else:
            store = ServerStore(client, spec)
        opened.append(store)
        return store

    yield make
    for store in opened:
        if store.backend.value == "edge":
            store.close()


def fill(store: VectorStore, vectors: np.ndarray, file_of: Callable[[int], str]) -> list[str]:
    points = [
        FacePoint(id=point_id(f"hash{i}", 0), vector=v, payload={"file": file_of(i), "face_index": 0})
        for i, v in enumerate(vectors)
    ]
    store.upsert(points)
    return [p.id for p in points]


def test_upsert_search_delete(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    rng = np.random.default_rng(0)
    vectors = unit(rng, 300)
    ids = fill(store, vectors, lambda i: f"img{i % 100}.jpg")
    assert store.count() == 300
    results = store.search(vectors[:5], limit=3, threshold=None, hnsw_ef=64)
    assert [r[0].id for r in results] == ids[:5]
    assert all(r[0].score == pytest.approx(1.0, abs=1e-3) for r in results)
    assert results[0][0].payload["file"] == "img0.jpg"
    # threshold cuts weak matches
    strong = store.search(vectors[:1], limit=10, threshold=0.9, hnsw_ef=64)
    assert [m.id for m in strong[0]] == ids[:1]
    # by file: three points share img7.jpg
    same_file = store.ids_for_file("img7.jpg")
    assert sorted(same_file) == sorted([ids[7], ids[107], ids[207]])
    store.delete(same_file)
    assert store.count() == 297 and store.ids_for_file("img7.jpg") == []
    assert store.retrieve([ids[8]])[0].payload["file"] == "img8.jpg"
    assert store.retrieve([ids[7]]) == []


def test_upsert_is_idempotent(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    vectors = unit(np.random.default_rng(1), 50)
    first = fill(store, vectors, lambda i: f"a{i}.jpg")
    second = fill(store, vectors, lambda i: f"a{i}.jpg")
    assert first == second and store.count() == 50


def test_other_pack_is_refused(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    fill(store, unit(np.random.default_rng(2), 10), lambda i: "x.jpg")
    if store.backend.value == "edge":
        store.close()
    other = CollectionSpec(name="faces", dim=DIM, pack="another-pack:def")
    with pytest.raises(PackMismatch, match="COLLECTION_NAME"):
        make_store(other)
    reopened = make_store()  # the original pack still opens it, data intact
    assert reopened.count() == 10


def test_info_and_health(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    fill(store, unit(np.random.default_rng(3), 20), lambda i: "x.jpg")
    info = store.info()
    assert info.vectors == 20 and info.name == "faces" and info.pack == SPEC.pack
    assert store.healthy()


def test_edge_index_is_built_and_search_stays_exact(tmp_path: Path) -> None:
    """Past the threshold the shard builds HNSW + int8 segments on the store's own thread (not in the upsert
    call); rescored search still finds each point."""
    store = EdgeStore(tmp_path / "faces", SPEC, index_threshold=3000)
    vectors = unit(np.random.default_rng(4), 3500)
    fill(store, vectors, lambda i: f"f{i}.jpg")
    assert store.wait_indexed(120)
    info = store.info()
    assert info.indexed >= 3000 and info.status == "green"
    results = store.search(vectors[:50], limit=1, threshold=None, hnsw_ef=128)
    hits = sum(r[0].id == point_id(f"hash{i}", 0) for i, r in enumerate(results))
    assert hits == 50
    store.close()


def test_edge_store_is_single_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = EdgeStore(tmp_path / "faces", SPEC)
    code = (
        "import sys; from pathlib import Path; from app.store import EdgeStore, CollectionSpec\n"
        f"EdgeStore(Path({str(tmp_path / 'faces')!r}), "
        f"CollectionSpec(name='faces', dim={DIM}, pack={SPEC.pack!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "already open in another process" in proc.stderr
    store.close()


class CountingClient:
    """A real qdrant-client whose every method call is counted by name."""

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


def test_server_store_retries_then_reports_unavailable() -> None:
    """A real qdrant-client pointed at a closed port: exactly `attempts` tries, then StoreUnavailable."""
    client = CountingClient(QdrantClient(url="http://127.0.0.1:9", timeout=1, check_compatibility=False))
    with pytest.raises(StoreUnavailable, match="unreachable during collection check"):
        ServerStore(client, SPEC, attempts=3, max_delay=600.0, wait_multiplier=0.001)
    assert client.calls == {"collection_exists": 3}


def test_server_store_does_not_retry_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4xx answer is our request's fault: raised at once, not retried; a 5xx answer is retried."""
    from qdrant_client.http.exceptions import UnexpectedResponse

    client = CountingClient(QdrantClient(location=":memory:"))
    store = ServerStore(client, SPEC, attempts=4, max_delay=600.0, wait_multiplier=0.001)
    points = [FacePoint(id=point_id("h", 0), vector=unit(np.random.default_rng(5), 1)[0], payload={"file": "a"})]
    for status, attempts in ((400, 1), (503, 4)):

        def answer(*args: Any, status: int = status, **kwargs: Any) -> None:
            raise UnexpectedResponse(status, "refused", b"{}", httpx.Headers())

        monkeypatch.setattr(client._client, "upsert", answer)
        client.calls.clear()
        with pytest.raises(UnexpectedResponse if status < 500 else StoreUnavailable):
            store.upsert(points)
        # a refusal also asks whether the collection is still there (a vanished one is named, see ServerStore)
        expected = {"upsert": attempts} if status >= 500 else {"upsert": 1, "collection_exists": 1}
        assert client.calls == expected, status
