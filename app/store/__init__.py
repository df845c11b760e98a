"""VectorStore: one interface, two backends.

EdgeStore keeps the collection in-process with Qdrant Edge (default, on disk under QDRANT_PATH); ServerStore
talks to a Qdrant server or cluster through qdrant-client (QDRANT_URL). Both use cosine distance, int8 scalar
quantization kept in RAM, HNSW, and search with rescoring. The model pack a collection was built with is
recorded with it; opening it with another pack is refused. Face thumbnails live beside it (ThumbnailStore).
"""

from __future__ import annotations

from app.config import Settings
from app.store.edge import EdgeStore
from app.store.model import (
    POINT_NAMESPACE,
    CollectionInfo,
    CollectionSpec,
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

__all__ = ["POINT_NAMESPACE", "CollectionInfo", "CollectionSpec", "EdgeStore", "FacePoint", "Match", "Origin",
           "PointQuery", "ServerStore", "StoreBackend", "ThumbnailStore", "VectorStore", "open_store", "point_id",
           "spec_from_settings"]


def open_store(settings: Settings, *, dim: int, pack: str) -> VectorStore:
    """Pick the backend from settings: QDRANT_URL set -> server, else the embedded shard."""
    spec = spec_from_settings(settings, dim=dim, pack=pack)
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key or None,
                              timeout=settings.qdrant_timeout)
        return ServerStore(client, spec)
    return EdgeStore(settings.qdrant_path / settings.collection_name, spec,
                     index_threshold=settings.index_threshold, min_free_bytes=settings.min_free_disk_mb * 2**20)
