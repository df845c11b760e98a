"""The service layer: FaceServiceApi, the surface every entry point calls, and FaceService, which runs it over
the engine, the heads and the store (decode -> FaceEngine.analyze_batch -> VectorStore search / upsert, plus
thumbnails). No HTTP here."""

from app.service.api import (
    MATCH_KEYS,
    AnalyzedFace,
    EngineStatus,
    FaceServiceApi,
    ImageToIndex,
    IndexedFace,
    IndexedImage,
    SearchedFace,
    content_hash,
    original_coords,
)
from app.service.facade import Analyzer, FaceService, FileLocks

__all__ = [
    "MATCH_KEYS",
    "AnalyzedFace",
    "Analyzer",
    "EngineStatus",
    "FaceService",
    "FaceServiceApi",
    "FileLocks",
    "ImageToIndex",
    "IndexedFace",
    "IndexedImage",
    "SearchedFace",
    "content_hash",
    "original_coords",
]
