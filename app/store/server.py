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

from app.config import Quantization
from app.errors import StoreUnavailable
from app.store.model import (
    FLOAT_INDEXED_KEYS,
    INDEXED_KEYS,
    LEGACY_BUILD,
    PACK_KEY,
    SCROLL_PAGE,
    CollectionInfo,
    CollectionSpec,
    FaceFilter,
    FacePoint,
    Match,
    Origin,
    Page,
    PointQuery,
    StoreBackend,
)

BUILD_KEY = "oceano_build"

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


def quantization_config(spec: CollectionSpec) -> Any:
    """The quantized copy searched in RAM (originals on disk, read for rescoring)."""
    from qdrant_client import models

    q = spec.quantization
    if q is Quantization.INT8:
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=spec.quantile, always_ram=True)
        )
    if q in (Quantization.TURBO4, Quantization.TURBO2):
        bits = models.TurboQuantBitSize.BITS4 if q is Quantization.TURBO4 else models.TurboQuantBitSize.BITS2
        return models.TurboQuantization(turbo=models.TurboQuantQuantizationConfig(bits=bits, always_ram=True))
    if q is Quantization.BINARY2:
        return models.BinaryQuantization(
            binary=models.BinaryQuantizationConfig(
                always_ram=True,
                encoding=models.BinaryQuantizationEncoding.TWO_BITS,
                query_encoding=models.BinaryQuantizationQueryEncoding.SCALAR8BITS,
            )
        )
    return None


def read_consistency(value: str) -> Any:
    """QDRANT_READ_CONSISTENCY: a number of replicas, or all / majority / quorum."""
    from qdrant_client import models

    return int(value) if value.isdigit() else models.ReadConsistencyType(value)


class ServerStore:
    """A collection on a Qdrant server or cluster (shards, replicas, write consistency from settings), through
    qdrant-client; reads ask QDRANT_READ_CONSISTENCY replicas. Every call is retried with exponential backoff,
    bounded in attempts and time."""

    backend = StoreBackend.SERVER

    def __init__(
        self,
        client: Any,
        spec: CollectionSpec,
        *,
        attempts: int = 5,
        max_delay: float = 30.0,
        wait_multiplier: float = 0.2,
        consistency: str = "1",
    ) -> None:
        self.client = client
        self.spec = spec
        self.consistency = read_consistency(consistency)
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
                "Qdrant %s failed (attempt %d), retrying: %s",
                what,
                state.attempt_number,
                state.outcome and state.outcome.exception(),
            ),
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
                    f"empty and re-ingest"
                ) from exc
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
            # The collection keeps what it was built with (search parameters follow it: quantization, rescore).
            self.spec = self.spec.with_build(meta.get(BUILD_KEY) or LEGACY_BUILD)
            self._create_indexes()  # collections made before these indexes existed get them too
            return
        spec = self.spec
        self._call(
            "collection create",
            lambda: self.client.create_collection(
                name,
                vectors_config=models.VectorParams(
                    size=spec.dim, distance=models.Distance.COSINE, on_disk=spec.vectors_on_disk
                ),
                hnsw_config=models.HnswConfigDiff(m=spec.hnsw_m, ef_construct=spec.hnsw_ef_construct),
                quantization_config=quantization_config(spec),
                shard_number=spec.shards,
                replication_factor=spec.replicas,
                write_consistency_factor=spec.write_consistency,
                on_disk_payload=True,
                metadata={PACK_KEY: spec.pack, "dim": spec.dim, BUILD_KEY: spec.build()},
            ),
        )
        self._create_indexes()
        logger.info(
            "created collection %s on the Qdrant server (%d shards, %d replicas, writes confirmed by %d)",
            name,
            spec.shards,
            spec.replicas,
            spec.write_consistency,
        )

    def upsert(self, points: Sequence[FacePoint]) -> None:
        from qdrant_client import models

        if not points:
            return
        structs = [
            models.PointStruct(id=p.id, vector=p.vector.astype(np.float32).tolist(), payload=p.payload) for p in points
        ]
        self._call("upsert", lambda: self.client.upsert(self.spec.name, points=structs, wait=True))

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
        from qdrant_client import models

        if len(vectors) == 0:
            return []
        quantization = (
            None
            if self.spec.quantization is Quantization.NONE
            else models.QuantizationSearchParams(rescore=self.spec.rescore, oversampling=self.spec.oversampling)
        )
        params = models.SearchParams(hnsw_ef=hnsw_ef, quantization=quantization)
        requests = [
            models.QueryRequest(
                query=v.astype(np.float32).tolist(),
                limit=limit,
                filter=None if where is None else _server_filter(where),
                with_payload=list(keys) if keys is not None else True,
                score_threshold=threshold,
                params=params,
            )
            for v in vectors
        ]
        responses = self._call(
            "search",
            lambda: self.client.query_batch_points(self.spec.name, requests=requests, consistency=self.consistency),
        )
        return [[Match(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in responses]

    def retrieve(self, ids: Sequence[str]) -> list[Match]:
        records = self._call(
            "retrieve",
            lambda: self.client.retrieve(
                self.spec.name, ids=list(ids), with_payload=True, with_vectors=False, consistency=self.consistency
            ),
        )
        return [Match(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def _create_indexes(self) -> None:
        from qdrant_client import models

        for key in INDEXED_KEYS:
            self._call(
                "index create",
                lambda key=key: self.client.create_payload_index(  # type: ignore[misc]
                    self.spec.name, field_name=key, field_schema=models.PayloadSchemaType.KEYWORD
                ),
            )
        for key in FLOAT_INDEXED_KEYS:
            self._call(
                "index create",
                lambda key=key: self.client.create_payload_index(  # type: ignore[misc]
                    self.spec.name, field_name=key, field_schema=models.PayloadSchemaType.FLOAT
                ),
            )

    def ids_for_file(self, file: str) -> list[str]:
        return self.find_ids(PointQuery(file=file))

    def find_ids(self, query: PointQuery) -> list[str]:
        flt = _server_filter(query.as_filter())
        ids: list[str] = []
        offset = None
        while True:
            page = self._scroll_page(flt, offset)
            records, offset = page
            ids.extend(str(r.id) for r in records)
            if offset is None:
                return ids

    def _scroll_page(self, flt: Any, offset: Any) -> tuple[list[Any], Any]:
        result: tuple[list[Any], Any] = self._call(
            "scroll",
            lambda: self.client.scroll(
                self.spec.name,
                scroll_filter=flt,
                limit=SCROLL_PAGE,
                offset=offset,
                with_payload=False,
                with_vectors=False,
                consistency=self.consistency,
            ),
        )
        return result

    def page(self, offset: str | None, limit: int) -> Page:
        records, next_offset = self._call(
            "scroll",
            lambda: self.client.scroll(
                self.spec.name,
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=True,
                consistency=self.consistency,
            ),
        )
        points = [FacePoint(str(r.id), _dense(r.vector), dict(r.payload or {})) for r in records]
        return Page(points, None if next_offset is None else str(next_offset))

    def scroll(
        self, where: FaceFilter, *, offset: str | None, limit: int, keys: Sequence[str] | None = None
    ) -> tuple[list[Match], str | None]:
        """One page of the faces `where` selects, in id order, with their payload (only `keys` when given)."""
        flt = _server_filter(where)
        records, next_offset = self._call(
            "scroll",
            lambda: self.client.scroll(
                self.spec.name,
                scroll_filter=flt,
                limit=limit,
                offset=offset,
                with_payload=list(keys) if keys is not None else True,
                with_vectors=False,
                consistency=self.consistency,
            ),
        )
        return [Match(str(r.id), 0.0, dict(r.payload or {})) for r in records], (
            None if next_offset is None else str(next_offset)
        )

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Set these payload keys on these points (other keys kept)."""
        from qdrant_client import models

        if ids:
            self._call(
                "set payload",
                lambda: self.client.set_payload(
                    self.spec.name, payload=payload, points=models.PointIdsList(points=list(ids)), wait=True
                ),
            )

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        records = self._call(
            "retrieve",
            lambda: self.client.retrieve(
                self.spec.name, ids=list(ids), with_payload=False, with_vectors=True, consistency=self.consistency
            ),
        )
        return {str(r.id): _dense(r.vector) for r in records}

    def snapshot(self) -> str:
        """A server-side snapshot of the collection (on a cluster: of the shards on the node answering); returns
        its name. Download it with GET /collections/{name}/snapshots/{snapshot}."""
        description = self._call("snapshot", lambda: self.client.create_snapshot(self.spec.name, wait=True))
        return str(description.name)

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        if ids:
            self._call(
                "delete",
                lambda: self.client.delete(
                    self.spec.name, points_selector=models.PointIdsList(points=list(ids)), wait=True
                ),
            )

    def count(self) -> int:
        return int(self._call("count", lambda: self.client.count(self.spec.name, exact=True)).count)

    def info(self) -> CollectionInfo:
        info = self._call("collection info", lambda: self.client.get_collection(self.spec.name))
        status = str(getattr(info.status, "value", info.status))
        # yellow: the server's optimizers are building index segments now (grey: builds pending, not started).
        return CollectionInfo(
            name=self.spec.name,
            vectors=int(info.points_count or 0),
            indexed=int(info.indexed_vectors_count or 0),
            status=status,
            backend=self.backend,
            pack=self.spec.pack,
            index_building=status == "yellow",
        )

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


def _server_filter(where: FaceFilter) -> Any:
    from qdrant_client import models

    must: list[Any] = [
        models.FieldCondition(key=key, match=models.MatchValue(value=value))
        for key, value in (("file", where.file), ("subject", where.subject), ("cluster", where.cluster))
        if value is not None
    ]
    must_not: list[Any] = []
    if where.no_subject:
        must.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="subject")))
    if where.no_cluster:
        must.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="cluster")))
    if where.min_quality is not None:
        must.append(models.FieldCondition(key="quality", range=models.Range(gte=where.min_quality)))
    upload = models.FieldCondition(key="origin", match=models.MatchValue(value=Origin.UPLOAD.value))
    if where.origin is Origin.UPLOAD:
        must.append(upload)
    elif where.origin is Origin.INGEST:
        must_not.append(upload)
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def _dense(vector: Any) -> np.ndarray:
    if isinstance(vector, dict):
        vector = vector.get("", next(iter(vector.values()), None))
    return np.asarray(vector, dtype=np.float32)
