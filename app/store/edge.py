"""EdgeStore: the collection in this process with Qdrant Edge, on disk under QDRANT_PATH (the default)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.errors import StorageFull, StoreUnavailable
from app.store.model import (
    INDEXED_KEYS,
    SCROLL_PAGE,
    CollectionInfo,
    CollectionSpec,
    FacePoint,
    Match,
    Origin,
    PointQuery,
    StoreBackend,
)

logger = logging.getLogger(__name__)

META_FILE = "oceano.json"
T = TypeVar("T")


class EdgeStore:
    """Qdrant Edge shard in this process. The shard's WAL lock makes it single-process: a second process
    opening it is refused (the ingest CLI hands its work to the running service instead).

    Qdrant Edge builds HNSW/quantized segments only when `optimize()` is called, and that call holds the
    GIL for its whole duration; it is therefore run at chosen moments (after an ingest batch crosses
    INDEX_THRESHOLD unindexed points, at the end of an ingest job, at start-up), never per request.
    """

    backend = StoreBackend.EDGE

    def __init__(self, path: Path, spec: CollectionSpec, *, index_threshold: int = 20000,
                 min_free_bytes: int = 0) -> None:
        from qdrant_edge import (
            Distance,
            EdgeConfig,
            EdgeOptimizersConfig,
            EdgeShard,
            EdgeVectorParams,
            HnswIndexConfig,
            PayloadSchemaType,
            ScalarQuantizationConfig,
            ScalarType,
            UpdateOperation,
        )

        self.spec = spec
        self.path = path
        self.index_threshold = index_threshold
        self.min_free_bytes = min_free_bytes
        self._write_lock = threading.Lock()
        self._closed = False
        meta_path = path / META_FILE
        exists = (path / "edge_config.json").exists()
        if exists:
            meta = _read_meta(meta_path)
            if meta.get("pack") != spec.pack or meta.get("dim") != spec.dim:
                raise spec.mismatch(meta.get("pack"), meta.get("dim"), str(path))
        # Qdrant sizes these thresholds in KB of vectors; ours are in points.
        kb_per_point = spec.dim * 4 / 1024
        optimizers = EdgeOptimizersConfig(indexing_threshold=max(1, int(index_threshold * kb_per_point)))
        config = EdgeConfig(
            vectors=EdgeVectorParams(size=spec.dim, distance=Distance.Cosine),
            optimizers=optimizers,
            hnsw_config=HnswIndexConfig(m=spec.hnsw_m, ef_construct=spec.hnsw_ef_construct,
                                        full_scan_threshold=10000),
            quantization_config=ScalarQuantizationConfig(type=ScalarType.Int8, quantile=spec.quantile,
                                                         always_ram=True),
        )
        try:
            if exists:
                self._shard = EdgeShard.load(str(path), config)
            else:
                path.mkdir(parents=True, exist_ok=True)
                self._shard = EdgeShard.create(str(path), config)
                _write_meta(meta_path, {"pack": spec.pack, "dim": spec.dim, "created": time.time()})
            # Also on collections made before these indexes existed (creating an existing index is a no-op).
            for key in INDEXED_KEYS:
                self._shard.update(UpdateOperation.create_field_index(key, PayloadSchemaType.Keyword))
            self._shard.flush()
        except Exception as exc:
            if "WouldBlock" in str(exc) or "lock" in str(exc).lower():
                raise StoreUnavailable(
                    f"the embedded Qdrant store at {path} is already open in another process (is the Oceano "
                    f"service running?). Submit work to the service (python -m app.ingest does this), or stop it"
                ) from exc
            raise StoreUnavailable(f"cannot open the embedded Qdrant store at {path}: {exc}") from exc
        logger.info("embedded Qdrant Edge collection %s at %s: %d points", spec.name, path, self.count())

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the vector store is closed (the service is shutting down)")

    def upsert(self, points: Sequence[FacePoint]) -> None:
        from qdrant_edge import Point, UpdateOperation

        if not points:
            return
        self._check_open()
        self._check_disk()
        batch = [Point(p.id, p.vector.astype(np.float32).tolist(), p.payload) for p in points]
        with self._write_lock:
            self._check_open()  # again under the lock: close() may have run while this call waited for it
            try:
                self._shard.update(UpdateOperation.upsert_points(batch))
            except Exception as exc:
                if "no space left" in str(exc).lower():
                    raise StorageFull(f"no space left on the device of {self.path} for the collection; free some "
                                      "disk space and retry") from exc
                raise
        if self.index_threshold and self.unindexed() >= self.index_threshold:
            self.optimize()

    def _read(self, call: Callable[[], T]) -> T:
        """A read of the shard: one that met a concurrent close() is StoreUnavailable, not the closed shard's own
        error (reads take no lock, so that searches never wait for a write)."""
        try:
            return call()
        except Exception as exc:
            if self._closed:
                raise StoreUnavailable("the vector store is closed (the service is shutting down)") from exc
            raise

    def _check_disk(self) -> None:
        """Refuse writes while the disk is nearly full: Qdrant Edge writes through memory maps, and a write that
        finds no space there kills the whole process (SIGBUS, seen on a full tmpfs), with nothing to catch."""
        if not self.min_free_bytes:
            return
        free = shutil.disk_usage(self.path).free
        if free < self.min_free_bytes:
            raise StorageFull(f"only {free / 2**20:.0f} MB free on the disk of {self.path}, under MIN_FREE_DISK_MB="
                              f"{self.min_free_bytes / 2**20:.0f}: writes are refused until space is freed")

    def unindexed(self) -> int:
        info = self._read(self._shard.info)
        return max(0, info.points_count - info.indexed_vectors_count)

    def search(self, vectors: np.ndarray, *, limit: int, threshold: float | None,
               hnsw_ef: int) -> list[list[Match]]:
        from qdrant_edge import QuantizationSearchParams, Query, QueryBatchRequest, QueryRequest, SearchParams

        if len(vectors) == 0:
            return []
        self._check_open()
        params = SearchParams(hnsw_ef=hnsw_ef, quantization=QuantizationSearchParams(rescore=True, oversampling=2.0))
        requests = [QueryRequest(limit=limit, query=Query.Nearest(v.astype(np.float32).tolist()), with_payload=True,
                                 score_threshold=threshold, params=params) for v in vectors]
        results = self._read(lambda: self._shard.query_batch(QueryBatchRequest(requests)))
        return [[Match(str(p.id), float(p.score), dict(p.payload or {})) for p in row] for row in results]

    def retrieve(self, ids: Sequence[str]) -> list[Match]:
        self._check_open()
        records = self._read(lambda: self._shard.retrieve(list(ids), True, False))
        return [Match(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def ids_for_file(self, file: str) -> list[str]:
        return self.find_ids(PointQuery(file=file))

    def find_ids(self, query: PointQuery) -> list[str]:
        from qdrant_edge import FieldCondition, Filter, MatchValue, ScrollRequest

        self._check_open()
        must: list[Any] = [FieldCondition(key=key, match=MatchValue(value))
                           for key, value in (("file", query.file), ("subject", query.subject)) if value is not None]
        must_not: list[Any] = []
        if query.origin is Origin.UPLOAD:
            must.append(FieldCondition(key="origin", match=MatchValue(Origin.UPLOAD.value)))
        elif query.origin is Origin.INGEST:
            must_not.append(FieldCondition(key="origin", match=MatchValue(Origin.UPLOAD.value)))
        flt = Filter(must=must, must_not=must_not or None)
        ids: list[str] = []
        offset = None
        while True:
            request = ScrollRequest(offset=offset, limit=SCROLL_PAGE, filter=flt, with_payload=False,
                                    with_vector=False)
            records, offset = self._read(lambda: self._shard.scroll(request))  # noqa: B023 (called at once)
            ids.extend(str(r.id) for r in records)
            if offset is None:
                return ids

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        if not ids:
            return
        self._check_open()
        with self._write_lock:
            self._check_open()
            self._shard.update(UpdateOperation.delete_points(list(ids)))

    def count(self) -> int:
        from qdrant_edge import CountRequest

        self._check_open()
        return int(self._read(lambda: self._shard.count(CountRequest(exact=True))))

    def info(self) -> CollectionInfo:
        self._check_open()
        info = self._read(self._shard.info)
        pending = info.points_count - info.indexed_vectors_count
        # Mirrors the server's colours: yellow while points wait for indexing past the threshold.
        status = "yellow" if self.index_threshold and pending >= self.index_threshold else "green"
        return CollectionInfo(name=self.spec.name, vectors=info.points_count, indexed=info.indexed_vectors_count,
                              status=status, backend=self.backend, pack=self.spec.pack)

    def healthy(self) -> bool:
        if self._closed:
            return False
        try:
            self._shard.info()
            return True
        except Exception:
            return False

    def optimize(self) -> bool:
        self._check_open()
        started = time.perf_counter()
        with self._write_lock:
            self._check_open()
            changed = bool(self._shard.optimize())
        if changed:
            logger.info("built the HNSW index of %s in %.1fs", self.spec.name, time.perf_counter() - started)
        return changed

    def flush(self) -> None:
        with self._write_lock:
            if not self._closed:
                self._shard.flush()

    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock:
            self._shard.flush()
            self._shard.close()
            self._closed = True


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(f"cannot read collection metadata {path}: {exc}") from exc


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)

