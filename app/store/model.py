"""What both vector-store backends share: point and match types, the collection spec, the VectorStore
protocol, and deterministic point ids."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from app.config import Quantization, Settings
from app.errors import PackMismatch

# Namespace for deterministic point ids: uuid5(namespace, "<image sha256>:<face index>").
POINT_NAMESPACE = uuid.UUID("6f0d6a3e-9c1b-5b7e-8a8e-0cea00000000")  # fixed forever: ids must not change
PACK_KEY = "oceano_pack"
SCROLL_PAGE = 1000


# Payload keys with a keyword index (filters on them are cheap on both backends).
INDEXED_KEYS = ("file", "subject", "origin", "cluster")
# Payload keys with a float index: a face's quality score, for `min_quality` filters inside a search.
FLOAT_INDEXED_KEYS = ("quality",)


class Origin(StrEnum):
    """Who wrote a face: an upload through the API, or bulk ingest of a file on disk. Replacement never
    crosses origins: re-ingesting /photos/IMG_0001.JPG never removes an upload named IMG_0001.JPG."""

    UPLOAD = "upload"
    INGEST = "ingest"


@dataclass(frozen=True, slots=True)
class PointQuery:
    """Which points: every condition given must hold. `origin` INGEST also matches points written before
    origins were recorded (they all came from a file name or path, and the only replacing writer then was
    ingest by path)."""

    file: str | None = None
    subject: str | None = None
    origin: Origin | None = None

    def __post_init__(self) -> None:
        if self.file is None and self.subject is None:
            raise ValueError("a point query needs a file or a subject")

    def as_filter(self) -> FaceFilter:
        return FaceFilter(subject=self.subject, file=self.file, origin=self.origin)


@dataclass(frozen=True, slots=True)
class FaceFilter:
    """Which faces a listing or a search wants: every condition given must hold (none: every face).
    `no_subject` / `no_cluster`: faces without a subject / cluster (null or missing). `min_quality`: faces whose
    `quality` is at least this (faces without a recorded quality do not match)."""

    subject: str | None = None
    file: str | None = None
    origin: Origin | None = None
    no_subject: bool = False
    cluster: str | None = None
    no_cluster: bool = False
    min_quality: float | None = None


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
    index_building: bool = False  # an index build (optimization) is running now

    @property
    def unindexed(self) -> int:
        """Points searched without the HNSW index (exactly) until the next build."""
        return max(0, self.vectors - self.indexed)


# The build parameters recorded with a collection when it is created (Edge: oceano.json; server: the collection's
# metadata). A collection keeps them whatever the settings say later.
BUILD_KEYS = (
    "hnsw_m",
    "hnsw_ef_construct",
    "quantile",
    "quantization",
    "vectors_on_disk",
    "index_threshold",
    "max_segment_points",
    "segment_number",
    "search_threads",
)
# What collections made before the parameters were recorded were built with.
LEGACY_BUILD: dict[str, Any] = {
    "hnsw_m": 16,
    "hnsw_ef_construct": 128,
    "quantile": 0.99,
    "quantization": "int8",
    "vectors_on_disk": False,
    "max_segment_points": 0,
    "segment_number": 0,
    "search_threads": 0,
}


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    """How collections are built and searched; one place for both backends. Build parameters (BUILD_KEYS) apply
    when a collection is created; oversampling and rescore apply to every search."""

    name: str
    dim: int
    pack: str
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    quantile: float = 0.99
    quantization: Quantization = Quantization.INT8
    vectors_on_disk: bool = True
    index_threshold: int = 20000  # points (embedded store)
    max_segment_points: int = 20000  # 0: Qdrant's own sizing (embedded store)
    segment_number: int = 0  # 0: Qdrant's own (embedded store)
    search_threads: int = 1  # 0: Qdrant's own pool (embedded store)
    shards: int = 1
    replicas: int = 1
    write_consistency: int = 1
    oversampling: float = 2.0
    rescore: bool = True

    def build(self) -> dict[str, Any]:
        """The build parameters, JSON-ready (recorded with the collection and in exports)."""
        return {key: (str(v) if isinstance(v := getattr(self, key), Quantization) else v) for key in BUILD_KEYS}

    def with_build(self, build: dict[str, Any]) -> CollectionSpec:
        """This spec with the build parameters a collection was created with (unknown keys ignored)."""
        known = {k: v for k, v in build.items() if k in BUILD_KEYS}
        if "quantization" in known:
            known["quantization"] = Quantization(known["quantization"])
        return dataclasses.replace(self, **known)

    def differs(self, other: CollectionSpec) -> list[str]:
        return [
            f"{k} {getattr(self, k)} (settings: {getattr(other, k)})"
            for k in BUILD_KEYS
            if getattr(self, k) != getattr(other, k)
        ]

    def mismatch(self, found_pack: str | None, found_dim: int | None, where: str) -> PackMismatch:
        return PackMismatch(
            f"collection '{self.name}' ({where}) holds embeddings from model pack '{found_pack}' "
            f"(dim {found_dim}), but the service loaded '{self.pack}' (dim {self.dim}). Embeddings of different "
            f"models cannot be compared. Either set COLLECTION_NAME to a new name for this pack, or set "
            f"MODEL_NAME back to the pack the collection was built with, or delete the collection and re-ingest "
            f"your photos with the new pack."
        )


@dataclass(slots=True)
class Page:
    """One page of a full scan in id order: the points and where the next page starts (None: the end)."""

    points: list[FacePoint]
    next_offset: str | None


class VectorStore(Protocol):
    backend: StoreBackend
    spec: CollectionSpec

    def upsert(self, points: Sequence[FacePoint]) -> None: ...
    def search(
        self,
        vectors: np.ndarray,
        *,
        limit: int,
        threshold: float | None,
        hnsw_ef: int,
        where: FaceFilter | None = None,
        keys: Sequence[str] | None = None,
    ) -> list[list[Match]]: ...
    def retrieve(self, ids: Sequence[str]) -> list[Match]: ...
    def find_ids(self, query: PointQuery) -> list[str]: ...
    def ids_for_file(self, file: str) -> list[str]: ...
    def delete(self, ids: Sequence[str]) -> None: ...
    def count(self) -> int: ...
    def info(self) -> CollectionInfo: ...
    def healthy(self) -> bool: ...
    def optimize(self) -> bool: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def page(self, offset: str | None, limit: int) -> Page: ...
    def scroll(
        self, where: FaceFilter, *, offset: str | None, limit: int, keys: Sequence[str] | None = None
    ) -> tuple[list[Match], str | None]: ...
    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None: ...
    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...


def iter_pages(store: VectorStore, *, offset: str | None = None, limit: int = SCROLL_PAGE) -> Iterator[Page]:
    """Every point with its vector and payload, a page at a time, from `offset` (a page's next_offset)."""
    while True:
        page = store.page(offset, limit)
        yield page
        if page.next_offset is None:
            return
        offset = page.next_offset


def spec_from_settings(settings: Settings, *, dim: int, pack: str) -> CollectionSpec:
    return CollectionSpec(
        name=settings.collection_name,
        dim=dim,
        pack=pack,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construct=settings.hnsw_ef_construct,
        quantization=settings.quantization,
        vectors_on_disk=settings.vectors_on_disk,
        index_threshold=settings.index_threshold,
        max_segment_points=settings.max_segment_points,
        segment_number=settings.segment_number,
        search_threads=settings.search_threads,
        shards=settings.qdrant_shards,
        replicas=settings.qdrant_replicas,
        write_consistency=settings.qdrant_write_consistency,
        oversampling=settings.oversampling,
        rescore=settings.rescore,
    )
