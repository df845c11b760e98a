"""Build parameters: recorded with each collection, applied to new ones only; the server path passes the cluster's
parameters (checked on the calls made, since qdrant-client's local mode, standing in for a server here, keeps
only some of them); settings that cannot work are refused at start-up."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from qdrant_client import QdrantClient, models

from app.config import Quantization, Settings
from app.store import CollectionSpec, EdgeStore, FacePoint, ServerStore, spec_from_settings

DIM = 32


def unit_points(n: int, seed: int = 0) -> list[FacePoint]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [
        FacePoint(str(uuid.UUID(int=seed * 10**6 + i + 1)), v, {"file": f"{i}.jpg", "subject": "s"})
        for i, v in enumerate(x)
    ]


def finds_itself(store: Any, pts: list[FacePoint]) -> bool:
    rows = store.search(np.stack([p.vector for p in pts]), limit=1, threshold=None, hnsw_ef=64)
    return [r[0].id for r in rows] == [p.id for p in pts]


def make_legacy_collection(path: Path, pack: str) -> None:
    """A collection exactly as Oceano created them before build parameters were recorded."""
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeOptimizersConfig,
        EdgeShard,
        EdgeVectorParams,
        HnswIndexConfig,
        Point,
        ScalarQuantizationConfig,
        ScalarType,
        UpdateOperation,
    )

    path.mkdir(parents=True)
    shard = EdgeShard.create(
        str(path),
        EdgeConfig(
            vectors=EdgeVectorParams(size=DIM, distance=Distance.Cosine),
            optimizers=EdgeOptimizersConfig(indexing_threshold=max(1, int(20000 * DIM * 4 / 1024))),
            hnsw_config=HnswIndexConfig(m=16, ef_construct=128, full_scan_threshold=10000),
            quantization_config=ScalarQuantizationConfig(type=ScalarType.Int8, quantile=0.99, always_ram=True),
        ),
    )
    shard.update(UpdateOperation.upsert_points([Point(p.id, p.vector.tolist(), p.payload) for p in unit_points(300)]))
    shard.optimize()
    shard.flush()
    shard.close()
    (path / "oceano.json").write_text(json.dumps({"pack": pack, "dim": DIM, "created": 0}))


def test_a_collection_made_with_the_old_defaults_still_opens_and_searches(tmp_path: Path) -> None:
    path = tmp_path / "faces"
    make_legacy_collection(path, "pack:1")
    before = json.loads((path / "edge_config.json").read_text())
    spec = CollectionSpec(
        name="faces",
        dim=DIM,
        pack="pack:1",
        hnsw_m=32,
        hnsw_ef_construct=64,
        quantization=Quantization.TURBO4,
        max_segment_points=30000,
        index_threshold=100,
    )
    store = EdgeStore(path, spec)
    assert store.count() == 300 and finds_itself(store, unit_points(300)[:20])
    assert store.spec.hnsw_m == 16 and store.spec.quantization is Quantization.INT8  # kept what it was built with
    assert store.spec.index_threshold == 100  # when builds are scheduled follows the settings
    assert store.spec.search_threads == 0  # Qdrant Edge's own pool, as these collections were made
    store.upsert(unit_points(200, seed=1))
    assert store.wait_indexed(120) and finds_itself(store, unit_points(200, seed=1)[:20])
    store.close()
    after = json.loads((path / "edge_config.json").read_text())
    assert after["hnsw_config"] == before["hnsw_config"]
    assert after["quantization_config"] == before["quantization_config"]


def test_new_collections_record_their_build_and_keep_it(tmp_path: Path) -> None:
    spec = CollectionSpec(
        name="faces",
        dim=DIM,
        pack="p:1",
        hnsw_m=24,
        hnsw_ef_construct=96,
        max_segment_points=5000,
        index_threshold=1000,
    )
    store = EdgeStore(tmp_path / "faces", spec)
    store.close()
    meta = json.loads((tmp_path / "faces" / "oceano.json").read_text())
    assert meta["build"] == spec.build() and meta["build"]["max_segment_points"] == 5000
    shard_config = json.loads((tmp_path / "faces" / "edge_config.json").read_text())
    assert shard_config["hnsw_config"]["m"] == 24 and shard_config["vectors"][""]["memory"] == "cold"
    assert shard_config["optimizers"]["max_segment_size"] == 5000 * DIM * 4 // 1024
    reopened = EdgeStore(tmp_path / "faces", CollectionSpec(name="faces", dim=DIM, pack="p:1", hnsw_m=8))
    assert reopened.spec.hnsw_m == 24
    reopened.close()


@pytest.mark.parametrize("threads", [1, 0])
def test_search_threads_is_the_shards_max_search_threads_and_searches_find_each_point(
    tmp_path: Path, threads: int
) -> None:
    """SEARCH_THREADS (default 1: each search in the caller's thread, cheaper than Qdrant Edge's pool here:
    bench/store_gil.py) reaches the shard's configuration, is kept with the collection, and searches still find
    every point."""
    spec = CollectionSpec(name="faces", dim=DIM, pack="p:1", index_threshold=100, search_threads=threads)
    assert spec_from_settings(Settings(), dim=DIM, pack="p:1").search_threads == 1
    store = EdgeStore(tmp_path / "faces", spec)
    store.upsert(unit_points(300))
    assert store.wait_indexed(120) and finds_itself(store, unit_points(300)[:50])
    store.close()
    shard_config = json.loads((tmp_path / "faces" / "edge_config.json").read_text())
    assert shard_config.get("max_search_threads") == (threads or None)  # absent: Qdrant Edge's pool
    reopened = EdgeStore(tmp_path / "faces", CollectionSpec(name="faces", dim=DIM, pack="p:1", search_threads=7))
    assert reopened.spec.search_threads == threads and finds_itself(reopened, unit_points(300)[50:80])
    reopened.close()


@pytest.mark.parametrize("quantization", list(Quantization))
def test_every_quantization_builds_and_finds_each_point(tmp_path: Path, quantization: Quantization) -> None:
    spec = CollectionSpec(name="faces", dim=DIM, pack="p:1", quantization=quantization, index_threshold=0)
    store = EdgeStore(tmp_path / "faces", spec)
    pts = unit_points(600)
    store.upsert(pts)
    store.optimize()
    assert store.info().indexed == 600 and finds_itself(store, pts[:30])
    store.close()


class SpyClient:
    """qdrant-client's local mode, recording the calls ServerStore makes (what a server would receive)."""

    def __init__(self) -> None:
        self.client = QdrantClient(location=":memory:")
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return target(*args, **kwargs)

        return call

    def kwargs(self, name: str) -> list[dict[str, Any]]:
        return [k for n, k in self.calls if n == name]


def test_server_collections_are_created_for_a_cluster() -> None:
    settings = Settings(
        qdrant_shards=6,
        qdrant_replicas=2,
        qdrant_write_consistency=2,
        qdrant_read_consistency="majority",
        hnsw_m=24,
        hnsw_ef_construct=200,
    )
    spy = SpyClient()
    store = ServerStore(
        spy, spec_from_settings(settings, dim=DIM, pack="p:1"), consistency=settings.qdrant_read_consistency
    )
    (create,) = spy.kwargs("create_collection")
    assert create["shard_number"] == 6 and create["replication_factor"] == 2
    assert create["write_consistency_factor"] == 2 and create["on_disk_payload"] is True
    assert create["vectors_config"].on_disk is True  # originals on disk
    assert create["hnsw_config"] == models.HnswConfigDiff(m=24, ef_construct=200)
    scalar = create["quantization_config"].scalar  # int8, kept in RAM
    assert scalar.type == models.ScalarType.INT8 and scalar.always_ram is True
    assert create["metadata"]["oceano_build"]["hnsw_m"] == 24
    indexes = {k["field_name"]: k["field_schema"] for k in spy.kwargs("create_payload_index")}
    keyword, real = models.PayloadSchemaType.KEYWORD, models.PayloadSchemaType.FLOAT
    assert indexes == {"file": keyword, "subject": keyword, "origin": keyword, "cluster": keyword, "quality": real}
    # what local mode itself reports of it
    config = spy.client.get_collection("faces").config
    assert config.params.vectors.on_disk is True and config.metadata["oceano_build"]["hnsw_m"] == 24

    pts = unit_points(50)
    store.upsert(pts)
    assert finds_itself(store, pts[:5])
    assert spy.kwargs("query_batch_points")[-1]["consistency"] == models.ReadConsistencyType.MAJORITY
    store.retrieve([pts[0].id])
    assert spy.kwargs("retrieve")[-1]["consistency"] == models.ReadConsistencyType.MAJORITY

    # re-opened with other settings: the collection keeps its build (and is not created again)
    again = ServerStore(spy, spec_from_settings(Settings(hnsw_m=8), dim=DIM, pack="p:1"), consistency="2")
    assert again.spec.hnsw_m == 24 and len(spy.kwargs("create_collection")) == 1
    assert again.consistency == 2


def test_cluster_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValidationError, match="QDRANT_WRITE_CONSISTENCY"):
        Settings(qdrant_replicas=2, qdrant_write_consistency=3)
    with pytest.raises(ValidationError, match="QDRANT_READ_CONSISTENCY"):
        Settings(qdrant_read_consistency="most")
    with pytest.raises(ValidationError, match="QDRANT_READ_CONSISTENCY"):
        Settings(qdrant_replicas=2, qdrant_read_consistency="3")
    with pytest.raises(ValidationError, match="MAX_SEGMENT_POINTS"):
        Settings(index_threshold=20000, max_segment_points=10000)
    assert Settings(index_threshold=50000).max_segment_points == 50000  # set alone (as before), it still starts
    with pytest.raises(ValidationError, match="quantization"):
        Settings(quantization="pq")
    assert Settings(qdrant_read_consistency=" Quorum ").qdrant_read_consistency == "quorum"
