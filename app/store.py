"""VectorStore: one interface, two backends.

EdgeStore keeps the collection in-process with Qdrant Edge (default, on disk under QDRANT_PATH); ServerStore
talks to a Qdrant server or cluster through qdrant-client (QDRANT_URL). Both use cosine distance, int8 scalar
quantization kept in RAM, HNSW, and search with rescoring. The model pack a collection was built with is
recorded with it; opening it with another pack is refused.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from app.config import Settings
from app.errors import PackMismatch, StoreUnavailable

logger = logging.getLogger(__name__)

# Namespace for deterministic point ids: uuid5(namespace, "<image sha256>:<face index>").
POINT_NAMESPACE = uuid.UUID("6f0d6a3e-9c1b-5b7e-8a8e-0cea00000000")  # fixed forever: ids must not change
META_FILE = "oceano.json"
PACK_KEY = "oceano_pack"
SCROLL_PAGE = 1000

T = TypeVar("T")


class StoreBackend(StrEnum):
    EDGE = "edge"
    SERVER = "server"


def point_id(content_hash: str, face_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{content_hash}:{face_index}"))


@dataclass(slots=True)
class FacePoint:
    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(slots=True)
class Match:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    vectors: int
    indexed: int
    status: str
    backend: StoreBackend
    pack: str | None


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    """How collections are built; one place for both backends."""

    name: str
    dim: int
    pack: str
    hnsw_m: int = 16
    hnsw_ef_construct: int = 128
    quantile: float = 0.99
    shards: int = 1
    replicas: int = 1

    def mismatch(self, found_pack: str | None, found_dim: int | None, where: str) -> PackMismatch:
        return PackMismatch(
            f"collection '{self.name}' ({where}) holds embeddings from model pack '{found_pack}' "
            f"(dim {found_dim}), but the service loaded '{self.pack}' (dim {self.dim}). Embeddings of different "
            f"models cannot be compared. Either set COLLECTION_NAME to a new name for this pack, or set "
            f"MODEL_NAME back to the pack the collection was built with, or delete the collection and re-ingest "
            f"your photos with the new pack."
        )


class VectorStore(Protocol):
    backend: StoreBackend
    spec: CollectionSpec

    def upsert(self, points: Sequence[FacePoint]) -> None: ...
    def search(
        self, vectors: np.ndarray, *, limit: int, threshold: float | None, hnsw_ef: int
    ) -> list[list[Match]]: ...
    def retrieve(self, ids: Sequence[str]) -> list[Match]: ...
    def ids_for_file(self, file: str) -> list[str]: ...
    def delete(self, ids: Sequence[str]) -> None: ...
    def count(self) -> int: ...
    def info(self) -> CollectionInfo: ...
    def healthy(self) -> bool: ...
    def optimize(self) -> bool: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def spec_from_settings(settings: Settings, *, dim: int, pack: str) -> CollectionSpec:
    return CollectionSpec(name=settings.collection_name, dim=dim, pack=pack, hnsw_m=settings.hnsw_m,
                          hnsw_ef_construct=settings.hnsw_ef_construct, shards=settings.qdrant_shards,
                          replicas=settings.qdrant_replicas)


def open_store(settings: Settings, *, dim: int, pack: str) -> VectorStore:
    """Pick the backend from settings: QDRANT_URL set -> server, else the embedded shard."""
    spec = spec_from_settings(settings, dim=dim, pack=pack)
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key or None,
                              timeout=settings.qdrant_timeout)
        return ServerStore(client, spec)
    return EdgeStore(settings.qdrant_path / settings.collection_name, spec,
                     index_threshold=settings.index_threshold)


# --------------------------------------------------------------------------------------------------- Edge


class EdgeStore:
    """Qdrant Edge shard in this process. The shard's WAL lock makes it single-process: a second process
    opening it is refused (the ingest CLI hands its work to the running service instead).

    Qdrant Edge builds HNSW/quantized segments only when `optimize()` is called, and that call holds the
    GIL for its whole duration; it is therefore run at chosen moments (after an ingest batch crosses
    INDEX_THRESHOLD unindexed points, at the end of an ingest job, at start-up), never per request.
    """

    backend = StoreBackend.EDGE

    def __init__(self, path: Path, spec: CollectionSpec, *, index_threshold: int = 20000) -> None:
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
                self._shard.update(UpdateOperation.create_field_index("file", PayloadSchemaType.Keyword))
                self._shard.flush()
                _write_meta(meta_path, {"pack": spec.pack, "dim": spec.dim, "created": time.time()})
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
        batch = [Point(p.id, p.vector.astype(np.float32).tolist(), p.payload) for p in points]
        with self._write_lock:
            self._shard.update(UpdateOperation.upsert_points(batch))
        if self.index_threshold and self.unindexed() >= self.index_threshold:
            self.optimize()

    def unindexed(self) -> int:
        info = self._shard.info()
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
        results = self._shard.query_batch(QueryBatchRequest(requests))
        return [[Match(str(p.id), float(p.score), dict(p.payload or {})) for p in row] for row in results]

    def retrieve(self, ids: Sequence[str]) -> list[Match]:
        self._check_open()
        records = self._shard.retrieve(list(ids), True, False)
        return [Match(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def ids_for_file(self, file: str) -> list[str]:
        from qdrant_edge import FieldCondition, Filter, MatchValue, ScrollRequest

        self._check_open()
        flt = Filter(must=[FieldCondition(key="file", match=MatchValue(file))])
        ids: list[str] = []
        offset = None
        while True:
            records, offset = self._shard.scroll(ScrollRequest(offset=offset, limit=SCROLL_PAGE, filter=flt,
                                                               with_payload=False, with_vector=False))
            ids.extend(str(r.id) for r in records)
            if offset is None:
                return ids

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        if not ids:
            return
        self._check_open()
        with self._write_lock:
            self._shard.update(UpdateOperation.delete_points(list(ids)))

    def count(self) -> int:
        from qdrant_edge import CountRequest

        self._check_open()
        return int(self._shard.count(CountRequest(exact=True)))

    def info(self) -> CollectionInfo:
        self._check_open()
        info = self._shard.info()
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
            changed = bool(self._shard.optimize())
        if changed:
            logger.info("built the HNSW index of %s in %.1fs", self.spec.name, time.perf_counter() - started)
        return changed

    def flush(self) -> None:
        if not self._closed:
            with self._write_lock:
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


# ------------------------------------------------------------------------------------------------- Server


def _transient(exc: BaseException) -> bool:
    """Connection trouble and 5xx answers are retried; 4xx answers are our bug and are not."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        code = exc.status_code or 0
        return code >= 500 or code == 429
    if isinstance(exc, ResponseHandlingException | ConnectionError | TimeoutError):
        return True
    try:
        import httpx

        return isinstance(exc, httpx.TransportError)
    except ImportError:  # pragma: no cover
        return False


class ServerStore:
    """A collection on a Qdrant server or cluster (shards and replicas from settings), through qdrant-client.
    Every call is retried with exponential backoff, bounded in attempts and time."""

    backend = StoreBackend.SERVER

    def __init__(self, client: Any, spec: CollectionSpec, *, attempts: int = 5, max_delay: float = 30.0,
                 wait_multiplier: float = 0.2) -> None:
        self.client = client
        self.spec = spec
        self._attempts = attempts
        self._max_delay = max_delay
        self._wait_multiplier = wait_multiplier
        self._ensure_collection()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._max_delay),
            wait=wait_exponential(multiplier=self._wait_multiplier, max=5.0),
            reraise=False,
            before_sleep=lambda state: logger.warning(
                "Qdrant %s failed (attempt %d), retrying: %s", what, state.attempt_number,
                state.outcome and state.outcome.exception()),
        )
        try:
            return retrying(fn)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise StoreUnavailable(f"Qdrant server unreachable during {what}: {last}") from last
        except Exception as exc:
            if _transient(exc):
                raise StoreUnavailable(f"Qdrant server unreachable during {what}: {exc}") from exc
            raise

    def _ensure_collection(self) -> None:
        from qdrant_client import models

        name = self.spec.name
        if self._call("collection check", lambda: self.client.collection_exists(name)):
            info = self._call("collection info", lambda: self.client.get_collection(name))
            meta = info.config.metadata or {}
            vectors = info.config.params.vectors
            dim = getattr(vectors, "size", None)
            if meta.get(PACK_KEY) != self.spec.pack or dim != self.spec.dim:
                raise self.spec.mismatch(meta.get(PACK_KEY), dim, "on the Qdrant server")
            return
        self._call("collection create", lambda: self.client.create_collection(
            name,
            vectors_config=models.VectorParams(size=self.spec.dim, distance=models.Distance.COSINE),
            hnsw_config=models.HnswConfigDiff(m=self.spec.hnsw_m, ef_construct=self.spec.hnsw_ef_construct),
            quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=self.spec.quantile, always_ram=True)),
            shard_number=self.spec.shards,
            replication_factor=self.spec.replicas,
            metadata={PACK_KEY: self.spec.pack, "dim": self.spec.dim},
        ))
        self._call("index create", lambda: self.client.create_payload_index(
            name, field_name="file", field_schema=models.PayloadSchemaType.KEYWORD))
        logger.info("created collection %s on the Qdrant server (%d shards, %d replicas)", name,
                    self.spec.shards, self.spec.replicas)

    def upsert(self, points: Sequence[FacePoint]) -> None:
        from qdrant_client import models

        if not points:
            return
        structs = [models.PointStruct(id=p.id, vector=p.vector.astype(np.float32).tolist(), payload=p.payload)
                   for p in points]
        self._call("upsert", lambda: self.client.upsert(self.spec.name, points=structs, wait=True))

    def search(self, vectors: np.ndarray, *, limit: int, threshold: float | None,
               hnsw_ef: int) -> list[list[Match]]:
        from qdrant_client import models

        if len(vectors) == 0:
            return []
        params = models.SearchParams(hnsw_ef=hnsw_ef, quantization=models.QuantizationSearchParams(
            rescore=True, oversampling=2.0))
        requests = [models.QueryRequest(query=v.astype(np.float32).tolist(), limit=limit, with_payload=True,
                                        score_threshold=threshold, params=params) for v in vectors]
        responses = self._call("search", lambda: self.client.query_batch_points(self.spec.name, requests=requests))
        return [[Match(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in responses]

    def retrieve(self, ids: Sequence[str]) -> list[Match]:
        records = self._call("retrieve", lambda: self.client.retrieve(self.spec.name, ids=list(ids),
                                                                      with_payload=True, with_vectors=False))
        return [Match(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def ids_for_file(self, file: str) -> list[str]:
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key="file", match=models.MatchValue(value=file))])
        ids: list[str] = []
        offset = None
        while True:
            page = self._scroll_page(flt, offset)
            records, offset = page
            ids.extend(str(r.id) for r in records)
            if offset is None:
                return ids

    def _scroll_page(self, flt: Any, offset: Any) -> tuple[list[Any], Any]:
        result: tuple[list[Any], Any] = self._call("scroll", lambda: self.client.scroll(
            self.spec.name, scroll_filter=flt, limit=SCROLL_PAGE, offset=offset, with_payload=False,
            with_vectors=False))
        return result

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        if ids:
            self._call("delete", lambda: self.client.delete(
                self.spec.name, points_selector=models.PointIdsList(points=list(ids)), wait=True))

    def count(self) -> int:
        return int(self._call("count", lambda: self.client.count(self.spec.name, exact=True)).count)

    def info(self) -> CollectionInfo:
        info = self._call("collection info", lambda: self.client.get_collection(self.spec.name))
        status = getattr(info.status, "value", str(info.status))
        return CollectionInfo(name=self.spec.name, vectors=int(info.points_count or 0),
                              indexed=int(info.indexed_vectors_count or 0), status=str(status),
                              backend=self.backend, pack=self.spec.pack)

    def healthy(self) -> bool:
        try:
            self.client.collection_exists(self.spec.name)
            return True
        except Exception:
            return False

    def optimize(self) -> bool:
        return False  # the server optimizes in the background on its own

    def flush(self) -> None:
        return None  # every write uses wait=True

    def close(self) -> None:
        self.client.close()
