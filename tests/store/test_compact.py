"""Offline compaction: small ingest segments merged into large ones with a stronger graph; the collection then
goes on building small segments, and every point is still found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import InvalidRequest, StoreUnavailable
from app.store import CollectionSpec, EdgeStore
from app.store.compact import compact
from tests.store.test_build_params import DIM, finds_itself, make_legacy_collection, unit_points

SPEC = CollectionSpec(name="faces", dim=DIM, pack="p:1", index_threshold=500, max_segment_points=500)


def test_compaction_merges_segments_and_keeps_the_collection_sizing(tmp_path: Path) -> None:
    path = tmp_path / "faces"
    store = EdgeStore(path, SPEC)
    pts = unit_points(3200)
    for start in range(0, len(pts), 250):
        store.upsert(pts[start : start + 250])
        # Each build before the next upsert: how many segments the background builds make no longer depends on
        # how fast the machine is (a slow one coalesced them: 5 segments seen instead of 6 or more).
        assert store.wait_indexed(120)
    before = store._shard.info().segments_count
    assert before >= 6 and store.info().unindexed > 0  # the tail below INDEX_THRESHOLD waits unindexed
    with pytest.raises(StoreUnavailable, match="service running"):
        compact(path, segment_points=4000)  # the store is open: nobody else may touch it
    store.close()

    report = compact(path, segment_points=4000, hnsw_m=24, ef_construct=64)
    assert report.points == 3200 and report.segments_after < before
    config = json.loads((path / "edge_config.json").read_text())
    assert config["optimizers"]["max_segment_size"] == 500 * DIM * 4 // 1024  # its own sizing is back
    assert json.loads((path / "oceano.json").read_text())["compacted"]["hnsw_m"] == 24

    store = EdgeStore(path, SPEC)
    assert store.count() == 3200 and store.info().unindexed == 0  # the tail got indexed too
    assert finds_itself(store, pts[::160])
    more = unit_points(600, seed=5)
    store.upsert(more)
    assert store.wait_indexed(120) and finds_itself(store, more[:10])
    store.close()


def test_compaction_refuses_collections_without_recorded_parameters(tmp_path: Path) -> None:
    make_legacy_collection(tmp_path / "faces", "p:1")
    with pytest.raises(InvalidRequest, match="export it and import"):
        compact(tmp_path / "faces", segment_points=1000)
