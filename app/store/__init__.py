"""VectorStore: one interface, two backends.

EdgeStore keeps the collection in-process with Qdrant Edge (default, on disk under QDRANT_PATH); ServerStore
talks to a Qdrant server or cluster through qdrant-client (QDRANT_URL). Both use cosine distance, int8 scalar
quantization kept in RAM, HNSW, and search with rescoring. The model pack a collection was built with is
recorded with it; opening it with another pack is refused. Face thumbnails live beside it (ThumbnailStore).
"""

from __future__ import annotations

import json
from typing import Any

from app.config import Settings
from app.store.edge import META_FILE, EdgeStore
from app.store.erasures import ERASURES_FILE, Erasure, ErasureJournal, erasure_key
from app.store.model import (
    PACK_KEY,
    POINT_NAMESPACE,
    CollectionInfo,
    CollectionSpec,
    FaceFilter,
    FacePoint,
    Match,
    Origin,
    PointQuery,
    StoreBackend,
    VectorStore,
    point_id,
    spec_from_settings,
)
from app.store.server import ServerStore
from app.store.thumbs import ThumbnailStore

__all__ = [
    "ERASURES_FILE",
    "POINT_NAMESPACE",
    "CollectionInfo",
    "CollectionSpec",
    "EdgeStore",
    "Erasure",
    "ErasureJournal",
    "FaceFilter",
    "FacePoint",
    "Match",
    "Origin",
    "PointQuery",
    "ServerStore",
    "StoreBackend",
    "ThumbnailStore",
    "VectorStore",
    "erasure_key",
    "open_store",
    "point_id",
    "recorded_identity",
    "server_client",
    "spec_from_settings",
    "store_identity",
    "other_embedded_collections",
]


def server_client(settings: Settings, url: str | None = None, api_key: str | None = None) -> Any:
    from qdrant_client import QdrantClient

    return QdrantClient(
        url=url or settings.qdrant_url,
        api_key=(settings.qdrant_api_key if api_key is None else api_key) or None,
        timeout=settings.qdrant_timeout,
    )


def recorded_identity(settings: Settings, client: Any = None) -> tuple[str, int] | None:
    """The model pack and dimension an existing collection was built with (None: no such collection), read
    without opening it (the embedded store's files, or the server collection's metadata)."""
    if settings.qdrant_url or client is not None:
        client = client or server_client(settings)
        if not client.collection_exists(settings.collection_name):
            return None
        meta = client.get_collection(settings.collection_name).config.metadata or {}
        return str(meta.get(PACK_KEY)), int(meta.get("dim") or 0)
    meta_path = settings.qdrant_path / settings.collection_name / META_FILE
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return str(meta.get("pack")), int(meta.get("dim") or 0)


def store_identity(settings: Settings) -> str:
    """The collection a wiring writes to, as THUMBS_DIR's owners record names it."""
    if settings.qdrant_url:
        return f"server {settings.qdrant_url.rstrip('/')} {settings.collection_name}"
    return f"embedded {(settings.qdrant_path / settings.collection_name).resolve()}"


def other_embedded_collections(settings: Settings) -> list[str]:
    """Collections beside this one under QDRANT_PATH (embedded store; empty for a server)."""
    if settings.qdrant_url or not settings.qdrant_path.is_dir():
        return []
    return [
        p.name
        for p in settings.qdrant_path.iterdir()
        if p.name != settings.collection_name and (p / "edge_config.json").exists()
    ]


def open_store(settings: Settings, *, dim: int, pack: str) -> VectorStore:
    """Pick the backend from settings: QDRANT_URL set -> server, else the embedded shard."""
    spec = spec_from_settings(settings, dim=dim, pack=pack)
    if settings.qdrant_url:
        return ServerStore(server_client(settings), spec, consistency=settings.qdrant_read_consistency)
    return EdgeStore(
        settings.qdrant_path / settings.collection_name, spec, min_free_bytes=settings.min_free_disk_mb * 2**20
    )
