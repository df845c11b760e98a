"""CollectionSpec -> Qdrant Edge configuration, search parameters and filters (the embedded store's levers in one
place).

Qdrant sizes segments and thresholds in KB of original vectors; the spec counts points.
"""

from __future__ import annotations

from typing import Any

from app.config import Quantization
from app.store.model import CollectionSpec, FaceFilter, Origin

FULL_SCAN_KB = 10000  # segments under this many KB of vectors are searched exactly (Qdrant's default)


def kb(points: int, dim: int) -> int:
    return max(1, int(points * dim * 4 / 1024))


def quantization_config(spec: CollectionSpec) -> Any:
    from qdrant_edge import (
        BinaryQuantizationConfig,
        BinaryQuantizationEncoding,
        BinaryQuantizationQueryEncoding,
        Memory,
        ScalarQuantizationConfig,
        ScalarType,
        TurboQuantBitSize,
        TurboQuantQuantizationConfig,
    )

    q = spec.quantization
    if q is Quantization.INT8:
        return ScalarQuantizationConfig(type=ScalarType.Int8, quantile=spec.quantile, memory=Memory.Pinned)
    if q is Quantization.TURBO4:
        return TurboQuantQuantizationConfig(bits=TurboQuantBitSize.Bits4, memory=Memory.Pinned)
    if q is Quantization.TURBO2:
        return TurboQuantQuantizationConfig(bits=TurboQuantBitSize.Bits2, memory=Memory.Pinned)
    if q is Quantization.BINARY2:
        return BinaryQuantizationConfig(
            encoding=BinaryQuantizationEncoding.TwoBits,
            query_encoding=BinaryQuantizationQueryEncoding.Scalar8Bits,
            memory=Memory.Pinned,
        )
    return None


def create_config(spec: CollectionSpec) -> Any:
    """The full configuration of a new shard."""
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeOptimizersConfig,
        EdgeVectorParams,
        HnswIndexConfig,
        Memory,
    )

    # INDEX_THRESHOLD 0 means "no automatic builds": every segment is then eligible when a build is asked for.
    optimizers = EdgeOptimizersConfig(
        indexing_threshold=kb(spec.index_threshold, spec.dim),
        max_segment_size=kb(spec.max_segment_points, spec.dim) if spec.max_segment_points else None,
        default_segment_number=spec.segment_number or None,
    )
    return EdgeConfig(
        vectors=EdgeVectorParams(
            size=spec.dim, distance=Distance.Cosine, memory=Memory.Cold if spec.vectors_on_disk else Memory.Cached
        ),
        optimizers=optimizers,
        hnsw_config=HnswIndexConfig(
            m=spec.hnsw_m, ef_construct=spec.hnsw_ef_construct, full_scan_threshold=FULL_SCAN_KB
        ),
        quantization_config=quantization_config(spec),
        max_search_threads=spec.search_threads or None,
    )


def keyword_index() -> Any:
    """Payload keyword indexes (file, subject, origin) memory-mapped: they live in the page cache, not in the
    process heap (filters on them are rare: replace and erase)."""
    from qdrant_edge import KeywordIndexParams, Memory

    return KeywordIndexParams(memory=Memory.Cached)


def float_index() -> Any:
    """The payload float index on `quality`, memory-mapped like the keyword ones."""
    from qdrant_edge import FloatIndexParams, Memory

    return FloatIndexParams(memory=Memory.Cached)


def search_params(spec: CollectionSpec, hnsw_ef: int) -> Any:
    from qdrant_edge import QuantizationSearchParams, SearchParams

    if spec.quantization is Quantization.NONE:
        return SearchParams(hnsw_ef=hnsw_ef)
    return SearchParams(
        hnsw_ef=hnsw_ef, quantization=QuantizationSearchParams(rescore=spec.rescore, oversampling=spec.oversampling)
    )


def edge_filter(where: FaceFilter) -> Any:
    """A FaceFilter as Qdrant Edge's Filter (None: every point)."""
    from qdrant_edge import FieldCondition, Filter, IsEmptyCondition, MatchValue, RangeFloat

    must: list[Any] = [
        FieldCondition(key=key, match=MatchValue(value))
        for key, value in (("file", where.file), ("subject", where.subject), ("cluster", where.cluster))
        if value is not None
    ]
    must_not: list[Any] = []
    if where.no_subject:
        must.append(IsEmptyCondition("subject"))
    if where.no_cluster:
        must.append(IsEmptyCondition("cluster"))
    if where.min_quality is not None:
        must.append(FieldCondition(key="quality", range=RangeFloat(gte=where.min_quality)))
    if where.origin is Origin.UPLOAD:
        must.append(FieldCondition(key="origin", match=MatchValue(Origin.UPLOAD.value)))
    elif where.origin is Origin.INGEST:
        must_not.append(FieldCondition(key="origin", match=MatchValue(Origin.UPLOAD.value)))
    if not must and not must_not:
        return None
    return Filter(must=must or None, must_not=must_not or None)
