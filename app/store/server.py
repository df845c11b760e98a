"""ServerStore: a collection on a Qdrant server or cluster through qdrant-client (QDRANT_URL), every call
retried with bounded exponential backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from app.errors import StoreUnavailable
from app.store.model import (
    INDEXED_KEYS,
    PACK_KEY,
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

T = TypeVar("T")


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
            if not self._collection_exists():
                raise StoreUnavailable(
                    f"collection '{self.spec.name}' no longer exists on the Qdrant server (during {what}): it was "
                    f"deleted behind Oceano's back. Restore it from a snapshot, or restart Oceano to create it "
                    f"empty and re-ingest") from exc
            raise

    def _collection_exists(self) -> bool:
        try:
            return bool(self.client.collection_exists(self.spec.name))
        except Exception:
            return True  # unreachable is not 'vanished': the caller's own error stands

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
            self._create_indexes()  # collections made before these indexes existed get them too
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
        self._create_indexes()
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

    def _create_indexes(self) -> None:
        from qdrant_client import models

        for key in INDEXED_KEYS:
            self._call("index create", lambda key=key: self.client.create_payload_index(  # type: ignore[misc]
                self.spec.name, field_name=key, field_schema=models.PayloadSchemaType.KEYWORD))

    def ids_for_file(self, file: str) -> list[str]:
        return self.find_ids(PointQuery(file=file))

    def find_ids(self, query: PointQuery) -> list[str]:
        from qdrant_client import models

        must: list[Any] = [models.FieldCondition(key=key, match=models.MatchValue(value=value))
                           for key, value in (("file", query.file), ("subject", query.subject)) if value is not None]
        must_not: list[Any] = []
        upload = models.FieldCondition(key="origin", match=models.MatchValue(value=Origin.UPLOAD.value))
        if query.origin is Origin.UPLOAD:
            must.append(upload)
        elif query.origin is Origin.INGEST:
            must_not.append(upload)
        flt = models.Filter(must=must, must_not=must_not or None)
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
        """The server answers and the collection is there (a vanished collection is not ready)."""
        try:
            return bool(self.client.collection_exists(self.spec.name))
        except Exception:
            return False

    def optimize(self) -> bool:
        return False  # the server optimizes in the background on its own

    def flush(self) -> None:
        return None  # every write uses wait=True

    def close(self) -> None:
        self.client.close()
