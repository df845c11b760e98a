"""FaceService: the flow shared by every entry point (API, page, ingest jobs).

decode -> FaceEngine.analyze_batch -> VectorStore search / upsert (+ thumbnails). No HTTP here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from app.config import MAX_TOP_K, Settings
from app.engine import FaceEngine, Image
from app.errors import InvalidRequest, NotFound
from app.faces import Face, FaceHead
from app.heads import Head, HeadRegistry
from app.imaging import DecodedImage, crop_thumbnail, decode_image, encode_jpeg
from app.store import FacePoint, Match, ThumbnailStore, VectorStore, point_id

logger = logging.getLogger(__name__)


class Analyzer(Protocol):
    """What runs the face models for requests: the FaceEngine itself, or the InferenceBatcher in front of it."""

    def analyze(self, images: Sequence[Image], *, heads: Sequence[FaceHead] = (),
                timeout: float | None = None) -> list[list[Face]]: ...


@dataclass(slots=True)
class SearchedFace:
    face: Face
    bbox: list[float]  # in the original image's pixels
    kps: list[list[float]]
    matches: list[Match]
    image: DecodedImage  # the query photo, for thumbnail()

    def thumbnail(self, size: int) -> bytes:
        """JPEG crop of the query face (the HTML page shows it; JSON answers do not pay for it)."""
        return encode_jpeg(crop_thumbnail(self.image.pixels, tuple(self.face.bbox), size=size))


@dataclass(slots=True)
class AnalyzedFace:
    face: Face  # face.attributes holds the heads' answers
    bbox: list[float]  # in the original image's pixels
    kps: list[list[float]]


@dataclass(slots=True)
class ImageToIndex:
    """One decoded image and where it came from."""

    image: DecodedImage
    content_hash: str
    file: str
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class IndexedImage:
    file: str
    ids: list[str]
    replaced: list[str]


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def original_coords(face: Face, image: DecodedImage) -> tuple[list[float], list[list[float]]]:
    s = image.scale
    bbox = [round(float(v) * s, 1) for v in face.bbox]
    kps = [[round(float(x) * s, 1), round(float(y) * s, 1)] for x, y in face.kps]
    return bbox, kps


class FaceService:
    def __init__(self, *, settings: Settings, engine: FaceEngine, heads: HeadRegistry, store: VectorStore,
                 thumbs: ThumbnailStore, analyzer: Analyzer | None = None) -> None:
        """`analyzer` runs the models for requests (the request batcher in the service, so that concurrent
        requests share engine batches); `engine` directly when None. Ingest jobs bring their own batches."""
        self.settings = settings
        self.engine = engine
        self.heads = heads
        self.store = store
        self.thumbs = thumbs
        self.analyzer: Analyzer = analyzer or _EngineAnalyzer(engine)

    def _analyze(self, images: Sequence[DecodedImage], heads: Sequence[Head]) -> list[list[Face]]:
        return self.analyzer.analyze(images, heads=heads)

    # ------------------------------------------------------------------ inputs
    def decode(self, data: bytes) -> DecodedImage:
        return decode_image(data, max_bytes=self.settings.max_upload_bytes,
                            max_pixels=int(self.settings.max_megapixels * 1e6))

    def search_params(self, top_k: int | None, threshold: float | None) -> tuple[int, float]:
        k = self.settings.top_k if top_k is None else top_k
        t = self.settings.sim_threshold if threshold is None else threshold
        if not 1 <= k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
        if not -1.0 <= t <= 1.0:
            raise InvalidRequest(f"threshold must be between -1 and 1, got {t}")
        return k, t

    # ------------------------------------------------------------------ search
    def search(self, images: Sequence[DecodedImage], *, top_k: int | None = None,
               threshold: float | None = None, heads: Sequence[Head] = ()) -> list[list[SearchedFace]]:
        """Every face of every image, with its nearest stored faces (and the answers of `heads`). One engine
        call, one store call."""
        k, t = self.search_params(top_k, threshold)
        faces = self._analyze(images, heads)
        flat = [f for row in faces for f in row]
        vectors = np.stack([f.embedding for f in flat]) if flat else np.zeros((0, self.engine.dim), np.float32)
        matches = self.store.search(vectors, limit=k, threshold=t, hnsw_ef=max(self.settings.hnsw_ef, k))
        out: list[list[SearchedFace]] = []
        i = 0
        for image, row in zip(images, faces, strict=True):
            searched = []
            for face in row:
                bbox, kps = original_coords(face, image)
                searched.append(SearchedFace(face=face, bbox=bbox, kps=kps, matches=matches[i], image=image))
                i += 1
            out.append(searched)
        return out

    # ------------------------------------------------------------------ heads
    def select_heads(self, names: str | None) -> list[Head]:
        """Heads by comma-separated names (NoSuchHead names the available ones); None: the HEADS default."""
        return self.heads.select(names)

    def analyze(self, images: Sequence[DecodedImage], *, heads: Sequence[Head]) -> list[list[AnalyzedFace]]:
        """Every face of every image with the answers of `heads`; no search, nothing stored. One engine call."""
        faces = self._analyze(images, heads)
        return [[AnalyzedFace(face, *original_coords(face, image)) for face in row]
                for image, row in zip(images, faces, strict=True)]

    # ------------------------------------------------------------------ index
    def index(self, items: Sequence[ImageToIndex]) -> list[IndexedImage]:
        """Detect and embed every image in one engine call, write thumbnails, then upsert all points in one
        store call. When a source file is indexed again with other content, its old faces are replaced."""
        faces = self.engine.analyze_batch([item.image for item in items])
        return self.store_faces(items, faces)

    def store_faces(self, items: Sequence[ImageToIndex], faces: Sequence[Sequence[Face]]) -> list[IndexedImage]:
        points, results = self.prepare_points(items, faces)
        self.write_points(points, results)
        return results

    def prepare_points(self, items: Sequence[ImageToIndex],
                       faces: Sequence[Sequence[Face]]) -> tuple[list[FacePoint], list[IndexedImage]]:
        """Points and thumbnails for every face; nothing is written to the store yet (see write_points).
        Ingest jobs call this per engine batch and write the points of many batches at once, so that only
        the points, not the decoded images, wait for the next upsert."""
        now = time.time()
        points: list[FacePoint] = []
        results: list[IndexedImage] = []
        for item, row in zip(items, faces, strict=True):
            ids = []
            for index, face in enumerate(row):
                pid = point_id(item.content_hash, index)
                bbox, _ = original_coords(face, item.image)
                self.thumbs.save(pid, encode_jpeg(crop_thumbnail(item.image.pixels, tuple(face.bbox),
                                                                 size=self.settings.thumb_size)))
                payload: dict[str, Any] = {
                    "file": item.file, "face_index": index, "bbox": bbox, "det_score": round(face.det_score, 4),
                    "thumb": pid, "ingested_at": now, "model": self.engine.pack.name,
                    "content_hash": item.content_hash, "subject": item.subject, **item.extra,
                }
                points.append(FacePoint(id=pid, vector=face.embedding, payload=payload))
                ids.append(pid)
            results.append(IndexedImage(file=item.file, ids=ids, replaced=[]))
        return points, results

    def write_points(self, points: Sequence[FacePoint], results: Sequence[IndexedImage]) -> None:
        """Upsert the points, then remove the faces each source file had under other content (a result
        with no ids removes all of its file's faces). Idempotent: point ids are deterministic, so running it
        again after a failure half-way gives the same collection."""
        # Faces the same source file had before under other content are stale: find them before writing.
        stale: list[str] = []
        for result in results:
            current = set(result.ids)
            old = [i for i in self.store.ids_for_file(result.file) if i not in current]
            result.replaced = old
            stale.extend(old)
        self.store.upsert(points)
        if stale:
            self.store.delete(stale)
            for sid in stale:
                self.thumbs.delete(sid)

    # ------------------------------------------------------------------ delete
    def delete_face(self, face_id: str) -> None:
        face_id = self.thumbs.validate_id(face_id)
        if not self.store.retrieve([face_id]):
            raise NotFound(f"no face with id {face_id}")
        self.store.delete([face_id])
        self.thumbs.delete(face_id)

    def delete_file(self, file: str) -> list[str]:
        ids = self.store.ids_for_file(file)
        if not ids:
            raise NotFound(f"no faces stored for file {file!r}")
        self.store.delete(ids)
        for fid in ids:
            self.thumbs.delete(fid)
        return ids


class _EngineAnalyzer:
    """The engine as an Analyzer, for wirings without a request batcher (the CLI's local run, tests)."""

    def __init__(self, engine: FaceEngine) -> None:
        self.engine = engine

    def analyze(self, images: Sequence[Image], *, heads: Sequence[FaceHead] = (),
                timeout: float | None = None) -> list[list[Face]]:
        return self.engine.analyze_batch(images, heads=heads, timeout=timeout)
