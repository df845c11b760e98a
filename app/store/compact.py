"""Offline compaction of an embedded collection: many small index segments merged into a few large ones.

While the service ingests, the embedded store builds small segments (MAX_SEGMENT_POINTS) so that no build
holds the process for long (Qdrant Edge keeps the GIL while it builds). Many small segments cost search time
(every query visits each) and recall (a face's look-alikes end up spread over segments). Compaction, run while
the service is stopped, merges them into segments of `segment_points` (a long build nobody waits on), indexes
the unindexed tail too, then puts the collection's own sizing back for the builds that follow.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

from app.errors import InvalidRequest, StoreUnavailable
from app.store.edge import META_FILE, read_meta, write_meta
from app.store.edge_params import create_config
from app.store.model import CollectionSpec


@dataclass(frozen=True, slots=True)
class CompactReport:
    points: int
    segments_before: int
    segments_after: int
    seconds: float


def compact(
    path: Path, *, segment_points: int, hnsw_m: int | None = None, ef_construct: int | None = None
) -> CompactReport:
    """Merge the collection at `path` (closed: nobody else may hold it) into segments of `segment_points`,
    built with `hnsw_m` / `ef_construct` (default: the collection's own)."""
    from qdrant_edge import EdgeShard

    meta = read_meta(path / META_FILE)
    if not meta:
        raise InvalidRequest(f"there is no embedded collection at {path}")
    if "build" not in meta:
        raise InvalidRequest(
            f"the collection at {path} predates recorded build parameters: export it and import "
            f"it into a new collection (python -m app.collection export/import) instead"
        )
    spec = CollectionSpec(name=path.name, dim=int(meta["dim"]), pack=str(meta["pack"])).with_build(meta["build"])
    started = time.perf_counter()
    try:
        shard = EdgeShard.load(str(path))
    except Exception as exc:
        raise StoreUnavailable(f"cannot open {path} ({exc}): is the Oceano service running? Stop it first") from exc
    info = shard.info()
    points, before = int(info.points_count), int(info.segments_count)
    shard.close()
    big = dataclasses.replace(
        spec,
        max_segment_points=segment_points,
        index_threshold=0,
        segment_number=max(1, math.ceil(points / segment_points)),
        hnsw_m=hnsw_m or spec.hnsw_m,
        hnsw_ef_construct=ef_construct or spec.hnsw_ef_construct,
    )
    shard = EdgeShard.load(str(path), create_config(big))
    try:
        shard.optimize()
        shard.flush()
    finally:
        shard.close()
    shard = EdgeShard.load(str(path), create_config(spec))  # the collection's own sizing for the next builds
    after = int(shard.info().segments_count)
    shard.close()
    seconds = time.perf_counter() - started
    meta["compacted"] = {
        "at": time.time(),
        "segment_points": segment_points,
        "hnsw_m": big.hnsw_m,
        "hnsw_ef_construct": big.hnsw_ef_construct,
        "segments": after,
        "seconds": round(seconds, 1),
    }
    write_meta(path / META_FILE, meta)
    return CompactReport(points=points, segments_before=before, segments_after=after, seconds=seconds)
