"""EdgeStore: the collection in this process with Qdrant Edge, on disk under QDRANT_PATH (the default)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.errors import StorageFull, StoreUnavailable
from app.store.edge_params import create_config, edge_filter, float_index, keyword_index, search_params
from app.store.model import (
    FLOAT_INDEXED_KEYS,
    INDEXED_KEYS,
    LEGACY_BUILD,
    SCROLL_PAGE,
    CollectionInfo,
    CollectionSpec,
    FaceFilter,
    FacePoint,
    Match,
    Page,
    PointQuery,
    StoreBackend,
)

logger = logging.getLogger(__name__)

META_FILE = "oceano.json"
T = TypeVar("T")


class EdgeStore:
    """Qdrant Edge shard in this process. The shard's WAL lock makes it single-process: a second process
    opening it is refused (the ingest CLI hands its work to the running service instead).

    Qdrant Edge builds HNSW/quantized segments only when `optimize()` is called, and that call holds the GIL for
    its whole duration: every thread of the process waits. Builds therefore run on a background thread of the
    store once INDEX_THRESHOLD points wait unindexed (never on the caller's path), plus at start-up and at the end
    of an ingest job; MAX_SEGMENT_POINTS bounds what one build does (see docs/SCALE.md).
    """

    backend = StoreBackend.EDGE

    def __init__(
        self,
        path: Path,
        spec: CollectionSpec,
        *,
        index_threshold: int | None = None,
        min_free_bytes: int = 0,
        background_index: bool = True,
    ) -> None:
        from qdrant_edge import EdgeShard, UpdateOperation

        self.path = path
        self.min_free_bytes = min_free_bytes
        self._write_lock = threading.Lock()
        self._closed = False
        self._building = False
        meta_path = path / META_FILE
        exists = (path / "edge_config.json").exists()
        if exists:
            meta = read_meta(meta_path)
            if meta.get("pack") != spec.pack or meta.get("dim") != spec.dim:
                raise spec.mismatch(meta.get("pack"), meta.get("dim"), str(path))
            # A collection keeps what it was built with; new settings apply to new collections.
            stored = spec.with_build(meta.get("build") or LEGACY_BUILD)
            if changed := stored.differs(spec):
                logger.info("collection %s keeps its build parameters: %s", spec.name, ", ".join(changed))
            spec = stored
        if index_threshold is not None:
            spec = dataclasses.replace(spec, index_threshold=index_threshold)
        self.spec = spec
        self.index_threshold = spec.index_threshold
        try:
            if exists:  # no config given: the shard keeps the one it persisted when it was created
                self._shard = EdgeShard.load(str(path))
            else:
                path.mkdir(parents=True, exist_ok=True)
                self._shard = EdgeShard.create(str(path), create_config(spec))
                write_meta(
                    meta_path, {"pack": spec.pack, "dim": spec.dim, "created": time.time(), "build": spec.build()}
                )
            # Also on collections made before these indexes existed; an existing index is left as it was built.
            present = set(self._shard.info().payload_schema)
            for key in INDEXED_KEYS:
                if key not in present:
                    self._shard.update(UpdateOperation.create_field_index(key, keyword_index()))
            for key in FLOAT_INDEXED_KEYS:
                if key not in present:
                    self._shard.update(UpdateOperation.create_field_index(key, float_index()))
            self._shard.flush()
        except Exception as exc:
            if "WouldBlock" in str(exc) or "lock" in str(exc).lower():
                raise StoreUnavailable(
                    f"the embedded Qdrant store at {path} is already open in another process (is the Oceano "
                    f"service running?). Submit work to the service (python -m app.ingest does this), or stop it"
                ) from exc
            raise StoreUnavailable(f"cannot open the embedded Qdrant store at {path}: {exc}") from exc
        self._indexer = _Indexer(self) if background_index and self.index_threshold else None
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
                    raise StorageFull(
                        f"no space left on the device of {self.path} for the collection; free some disk space and retry"
                    ) from exc
                raise
        if self.index_threshold and self.unindexed() >= self.index_threshold:
            if self._indexer is not None:
                self._indexer.due()  # built on the store's own thread, never on the caller's path
            else:
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
            raise StorageFull(
                f"only {free / 2**20:.0f} MB free on the disk of {self.path}, under MIN_FREE_DISK_MB="
                f"{self.min_free_bytes / 2**20:.0f}: writes are refused until space is freed"
            )

    def unindexed(self) -> int:
        info = self._read(self._shard.info)
        return max(0, info.points_count - info.indexed_vectors_count)

    def search(
        self,
        vectors: np.ndarray,
        *,
        limit: int,
        threshold: float | None,
        hnsw_ef: int,
        where: FaceFilter | None = None,
        keys: Sequence[str] | None = None,
    ) -> list[list[Match]]:
        """Per vector, its nearest points with their payload (only `keys` when given)."""
        from qdrant_edge import Query, QueryBatchRequest, QueryRequest

        if len(vectors) == 0:
            return []
        self._check_open()
        params = search_params(self.spec, hnsw_ef)
        flt = None if where is None else edge_filter(where)
        requests = [
            QueryRequest(
                limit=limit,
                query=Query.Nearest(v.astype(np.float32).tolist()),
                with_payload=list(keys) if keys is not None else True,
                filter=flt,
                score_threshold=threshold,
                params=params,
            )
            for v in vectors
        ]
        results = self._read(lambda: self._shard.query_batch(QueryBatchRequest(requests)))
        return [[Match(str(p.id), float(p.score), dict(p.payload or {})) for p in row] for row in results]

    def retrieve(self, ids: Sequence[str]) -> list[Match]:
        self._check_open()
        records = self._read(lambda: self._shard.retrieve(list(ids), True, False))
        return [Match(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def ids_for_file(self, file: str) -> list[str]:
        return self.find_ids(PointQuery(file=file))

    def find_ids(self, query: PointQuery) -> list[str]:
        from qdrant_edge import ScrollRequest

        self._check_open()
        flt = edge_filter(query.as_filter())
        ids: list[str] = []
        offset = None
        while True:
            request = ScrollRequest(offset=offset, limit=SCROLL_PAGE, filter=flt, with_payload=False, with_vector=False)
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
        # Mirrors the server's colours: yellow while a build runs or points wait for one past the threshold.
        due = bool(self.index_threshold) and pending >= self.index_threshold
        return CollectionInfo(
            name=self.spec.name,
            vectors=info.points_count,
            indexed=info.indexed_vectors_count,
            status="yellow" if due or self._building else "green",
            backend=self.backend,
            pack=self.spec.pack,
            index_building=self._building,
        )

    def healthy(self) -> bool:
        if self._closed:
            return False
        try:
            self._shard.info()
            return True
        except Exception:
            return False

    def optimize(self) -> bool:
        """Build the pending index segments now (blocks the whole process while Qdrant Edge works)."""
        self._check_open()
        with self._write_lock:
            self._check_open()
            started, cpu = time.perf_counter(), time.process_time()
            self._building = True
            try:
                changed = bool(self._shard.optimize())
            finally:
                self._building = False
        if changed:  # CPU seconds beside the wall time: on a busy machine the wall time says little of the work
            logger.info(
                "built the HNSW index of %s in %.2fs (%.2fs CPU)",
                self.spec.name,
                time.perf_counter() - started,
                time.process_time() - cpu,
            )
        return changed

    def wait_indexed(self, timeout: float = 600.0) -> bool:
        """Wait until no background build is due or running. For tests and benchmarks: the service never waits
        (an ingest job builds what is due itself, with optimize, when it ends)."""
        return self._indexer.idle(timeout) if self._indexer is not None else True

    def page(self, offset: str | None, limit: int) -> Page:
        from qdrant_edge import ScrollRequest

        self._check_open()
        records, next_offset = self._shard.scroll(
            ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=True)
        )
        points = [FacePoint(str(r.id), _dense(r.vector, self.spec.dim), dict(r.payload or {})) for r in records]
        return Page(points, None if next_offset is None else str(next_offset))

    def scroll(
        self, where: FaceFilter, *, offset: str | None, limit: int, keys: Sequence[str] | None = None
    ) -> tuple[list[Match], str | None]:
        """One page of the faces `where` selects, in id order, with their payload (only `keys` when given)."""
        from qdrant_edge import ScrollRequest

        self._check_open()
        request = ScrollRequest(
            offset=offset,
            limit=limit,
            filter=edge_filter(where),
            with_payload=list(keys) if keys is not None else True,
            with_vector=False,
        )
        records, next_offset = self._read(lambda: self._shard.scroll(request))
        return [Match(str(r.id), 0.0, dict(r.payload or {})) for r in records], (
            None if next_offset is None else str(next_offset)
        )

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Set these payload keys on these points (other keys kept); ids that are gone are left alone."""
        from qdrant_edge import UpdateOperation

        if not ids:
            return
        self._check_open()
        self._check_disk()
        with self._write_lock:
            self._check_open()
            present: list[int | uuid.UUID | str] = [str(r.id) for r in self._shard.retrieve(list(ids), False, False)]
            if present:  # Qdrant Edge refuses the whole call for one missing id
                self._shard.update(UpdateOperation.set_payload(present, payload))

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        self._check_open()
        records = self._read(lambda: self._shard.retrieve(list(ids), False, True))
        return {str(r.id): _dense(r.vector, self.spec.dim) for r in records}

    def snapshot(self, dest: Path) -> Path:
        """A consistent copy of the collection's folder: flushed, with writes and builds held off meanwhile."""
        self._check_open()
        with self._write_lock:
            self._shard.flush()
            shutil.copytree(self.path, dest, ignore=shutil.ignore_patterns("*.lock", "*.tmp"))
        return dest

    def flush(self) -> None:
        with self._write_lock:
            if not self._closed:
                self._shard.flush()

    def close(self) -> None:
        if self._closed:
            return
        if self._indexer is not None:
            self._indexer.stop()
        with self._write_lock:
            self._shard.flush()
            self._shard.close()
            self._closed = True


class _Indexer:
    """The store's build thread: runs optimize() when upserts report a build due, one build at a time."""

    def __init__(self, store: EdgeStore) -> None:
        self._store = store
        self._due = threading.Event()
        self._stop = False
        self._running = False
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"index-{store.spec.name}", daemon=True)
        self._thread.start()

    def due(self) -> None:
        with self._idle:
            self._due.set()

    def _run(self) -> None:
        while True:
            self._due.wait()
            with self._idle:
                if self._stop:
                    return
                self._due.clear()
                self._running = True
            try:
                self._store.optimize()
            except StoreUnavailable:
                pass  # closing
            except Exception:
                logger.exception(
                    "background index build of %s failed; retried after the next upsert", self._store.spec.name
                )
            finally:
                with self._idle:
                    self._running = False
                    self._idle.notify_all()

    def idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._due.is_set() and not self._running, timeout)

    def stop(self) -> None:
        with self._idle:
            self._stop = True
            self._due.set()
        self._thread.join(timeout=600)


def _dense(vector: Any, dim: int) -> np.ndarray:
    if isinstance(vector, dict):
        vector = vector.get("", next(iter(vector.values()), None))
    if vector is None:
        return np.zeros(dim, dtype=np.float32)
    return np.asarray(vector, dtype=np.float32)


def read_meta(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(f"cannot read collection metadata {path}: {exc}") from exc


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)
