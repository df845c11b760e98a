"""Store failures become clear domain errors: a vanished server collection, a full disk under Qdrant Edge.
The server is qdrant-client's local mode (no Qdrant server can run here); the full disk is a real tmpfs."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.errors import StorageFull, StoreUnavailable
from app.store import CollectionSpec, EdgeStore, FacePoint, Origin, PointQuery, ServerStore, VectorStore, point_id
from tests.support import small_tmpfs

DIM = 64
SPEC = CollectionSpec(name="faces", dim=DIM, pack="test-pack:abc")


def points(n: int, start: int = 0, **payload: object) -> list[FacePoint]:
    rng = np.random.default_rng(start)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return [
        FacePoint(point_id(f"h{start + i}", 0), v / np.linalg.norm(v), {"file": f"f{start + i}", **payload})
        for i, v in enumerate(vectors)
    ]


def test_vanished_server_collection_is_named_and_not_ready() -> None:
    client = QdrantClient(location=":memory:")  # stands in for a Qdrant server
    store = ServerStore(client, SPEC)
    store.upsert(points(3))
    assert store.healthy()
    client.delete_collection(SPEC.name)  # someone deleted it behind Oceano's back
    assert not store.healthy()
    with pytest.raises(StoreUnavailable, match="collection 'faces' no longer exists on the Qdrant server"):
        store.search(np.ones((1, DIM), np.float32), limit=3, threshold=None, hnsw_ef=64)


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_find_ids_by_subject_and_origin(backend: str, tmp_path: Path) -> None:
    store: VectorStore = (
        EdgeStore(tmp_path / "faces", SPEC)
        if backend == "edge"
        else ServerStore(QdrantClient(location=":memory:"), SPEC)
    )
    legacy = points(2, 0, subject="Ann")  # written before origins were recorded
    uploaded = points(2, 10, subject="Ann", origin=Origin.UPLOAD.value)
    ingested = points(1, 20, subject="Bob", origin=Origin.INGEST.value)
    store.upsert(legacy + uploaded + ingested)
    ann = {p.id for p in legacy + uploaded}
    assert set(store.find_ids(PointQuery(subject="Ann"))) == ann
    assert store.find_ids(PointQuery(file="f10", origin=Origin.UPLOAD)) == [uploaded[0].id]
    assert store.find_ids(PointQuery(file="f10", origin=Origin.INGEST)) == []
    assert store.find_ids(PointQuery(file="f0", origin=Origin.INGEST)) == [legacy[0].id]
    assert store.find_ids(PointQuery(file="f20", origin=Origin.INGEST)) == [ingested[0].id]
    if backend == "edge":
        store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", "160m") as mount:
        yield mount


def test_edge_store_refuses_writes_on_a_nearly_full_disk(small_disk: Path) -> None:
    """Qdrant Edge writing to a full disk dies of SIGBUS (a whole-process crash, seen here on a full tmpfs), so
    writes are refused while free space is under MIN_FREE_DISK_MB, and accepted again once it is freed."""
    store = EdgeStore(small_disk / "faces", SPEC, min_free_bytes=64 * 2**20)
    store.upsert(points(100))
    ballast = small_disk / "ballast"
    free = shutil.disk_usage(small_disk).free
    ballast.write_bytes(b"\0" * (free - 32 * 2**20))  # leaves 32 MB
    with pytest.raises(StorageFull, match="MIN_FREE_DISK_MB=64"):
        store.upsert(points(100, 100))
    assert store.count() == 100  # nothing half-written
    ballast.unlink()
    store.upsert(points(100, 100))
    assert store.count() == 200
    store.close()


def test_a_write_waiting_while_the_store_closes_gets_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a write that passed the open check and then waited for close() ran on the closed shard and failed
    with the engine's own error, which callers (ingest's bounded retries) do not expect. The writer is known to
    be past its first open check before the close starts: without the check under the lock this test fails."""
    store = EdgeStore(tmp_path / "faces", SPEC)
    store.upsert(points(10))
    check_open = store._check_open
    past_first_check = threading.Event()

    def checked() -> None:
        check_open()
        past_first_check.set()

    monkeypatch.setattr(store, "_check_open", checked)
    outcome: list[BaseException] = []
    with store._write_lock:  # as close() holds it while it flushes

        def write() -> None:
            try:
                store.upsert(points(10, 10))
            except BaseException as exc:
                outcome.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        assert past_first_check.wait(60), "the writer never reached its open check"
        store._shard.flush()
        store._shard.close()
        store._closed = True
    writer.join(60)
    assert not writer.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable), outcome


def test_a_read_that_meets_a_concurrent_close_gets_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads take no lock: one that passed its open check and then met close() used to raise the closed shard's
    own error (seen as a flaky ingest retry count: an attempt that failed with neither success nor
    StoreUnavailable)."""
    store = EdgeStore(tmp_path / "faces", SPEC)
    store.upsert(points(5))
    check_open = store._check_open

    def check_then_close() -> None:  # the close() of another thread lands right after the check
        check_open()
        monkeypatch.setattr(store, "_check_open", check_open)
        store.close()

    monkeypatch.setattr(store, "_check_open", check_then_close)
    with pytest.raises(StoreUnavailable, match="closed"):
        store.find_ids(PointQuery(file="f0"))
