"""FaceService: the flow shared by every entry point (API, page, ingest jobs).

decode -> FaceEngine.analyze_batch -> VectorStore search / upsert (+ thumbnails). No HTTP here.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.config import MAX_TOP_K, Settings
from app.engine import CallSource, FaceEngine, Image, Ticket
from app.errors import ImageTooLarge, InvalidRequest, NotFound, OceanoError
from app.faces import Face, FaceHead
from app.heads import Head, HeadRegistry
from app.imaging import (
    DecodedImage,
    PixelGate,
    checked_header,
    crop_thumbnail,
    decode_image,
    decoded_pixels,
    encode_jpeg,
    read_header,
)
from app.store import (
    ErasureJournal,
    FacePoint,
    Match,
    Origin,
    PointQuery,
    ThumbnailStore,
    VectorStore,
    erasure_key,
    point_id,
)

logger = logging.getLogger(__name__)


class Analyzer(Protocol):
    """What runs the face models for requests: the FaceEngine itself, or the InferenceBatcher in front of it."""

    def admit(self, images: int) -> Ticket | None: ...

    def analyze(
        self,
        images: Sequence[Image],
        *,
        heads: Sequence[FaceHead] = (),
        timeout: float | None = None,
        ticket: Ticket | None = None,
        embed: bool = True,
    ) -> list[list[Face]]: ...


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
    """One decoded image and where it came from. `replace`: the faces written earlier under the same `file` by
    the same origin, and not found again in this image, are removed (bulk ingest of a changed file on disk; an
    upload only when its caller names the `source` and asks for it). Nothing else ever deletes faces."""

    image: DecodedImage
    content_hash: str
    file: str
    subject: str | None = None
    origin: Origin = Origin.UPLOAD
    replace: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class IndexedImage:
    file: str
    ids: list[str]
    replaced: list[str]
    origin: Origin = Origin.UPLOAD
    replace: bool = False
    staged: dict[str, Path] = field(default_factory=dict)  # thumbnails written, moved into place after the upsert


class FileLocks:
    """Striped locks by source file: each file's replace (read its ids, upsert, delete the stale ones) and each
    delete run alone with respect to other writers of the same file, in this process. Several files are
    locked in stripe order, so two writers never wait for each other in a cycle."""

    def __init__(self, stripes: int = 256) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    @contextmanager
    def hold(self, files: Iterable[str]) -> Iterator[None]:
        stripes = sorted({hash(f) % len(self._locks) for f in files})
        with ExitStack() as stack:
            for stripe in stripes:
                stack.enter_context(self._locks[stripe])
            yield


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def original_coords(face: Face, image: DecodedImage) -> tuple[list[float], list[list[float]]]:
    s = image.scale
    bbox = [round(float(v) * s, 1) for v in face.bbox]
    kps = [[round(float(x) * s, 1), round(float(y) * s, 1)] for x, y in face.kps]
    return bbox, kps


class FaceService:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: FaceEngine,
        heads: HeadRegistry,
        store: VectorStore,
        thumbs: ThumbnailStore,
        erasures: ErasureJournal,
        analyzer: Analyzer | None = None,
    ) -> None:
        """`analyzer` runs the models for requests (the request batcher in the service, so that concurrent
        requests share engine batches); `engine` directly when None. Ingest jobs bring their own batches.
        `erasures`: where every deletion is recorded before it starts (see ErasureJournal)."""
        self.settings = settings
        self.engine = engine
        self.heads = heads
        self.store = store
        self.thumbs = thumbs
        self.erasures = erasures
        self.analyzer: Analyzer = analyzer or _EngineAnalyzer(engine)
        self.file_locks = FileLocks()
        self.decode_gate = PixelGate(int(settings.decode_megapixels * 1e6), timeout=settings.gpu_acquire_timeout)

    def runtime_info(self) -> dict[str, Any]:
        """What runs the models: providers and their options in force, batch sizes, warm-up seconds (/status)."""
        return {
            **self.engine.runtime_info(),
            "head_batch_sizes": {e.spec.name: list(e.head.batch_sizes) for e in self.heads.listings() if e.head},
        }

    def admit(self, images: int = 1) -> Ticket | None:
        """A place in line for a request's images, taken before its uploads are decoded: EngineBusy at once when
        the engine is too busy to take them within GPU_ACQUIRE_TIMEOUT (None: no request batcher)."""
        return self.analyzer.admit(images)

    def _analyze(
        self, images: Sequence[DecodedImage], heads: Sequence[Head], ticket: Ticket | None = None, embed: bool = True
    ) -> list[list[Face]]:
        return self.analyzer.analyze(images, heads=heads, ticket=ticket, embed=embed)

    # ------------------------------------------------------------------ inputs
    def decode(self, data: bytes, *, max_side: int | None = None) -> DecodedImage:
        """Validate and decode one upload: refused from its header when over the limits, decoded only when the
        process-wide decode bound (DECODE_MEGAPIXELS) has room for it. `max_side`: reduce the pixels to at most
        this long side (detection then costs less; boxes still come back in the original's pixels)."""
        limits = {"max_bytes": self.settings.max_upload_bytes, "max_pixels": int(self.settings.max_megapixels * 1e6)}
        header = checked_header(data, **limits)
        with self.decode_gate.hold(decoded_pixels(header)):
            return decode_image(data, **limits, max_side=max_side, header=header)

    def check_request_pixels(self, uploads: Sequence[bytes]) -> None:
        """One request's images together, from their headers, before any is decoded: at most
        MAX_REQUEST_MEGAPIXELS (the batch endpoint's 32 flat 49 MP PNGs are refused here). Unreadable headers are
        left for decode() to name, image by image."""
        total = 0
        for data in uploads:
            try:
                total += read_header(data).pixels
            except OceanoError:
                continue
        budget = int(self.settings.max_request_megapixels * 1e6)
        if total > budget:
            raise ImageTooLarge(
                f"the images of this request hold {total / 1e6:.0f} megapixels together, over the "
                f"{budget / 1e6:.0f} megapixel budget of one request (MAX_REQUEST_MEGAPIXELS)"
            )

    def search_params(self, top_k: int | None, threshold: float | None) -> tuple[int, float]:
        k = self.settings.top_k if top_k is None else top_k
        t = self.settings.sim_threshold if threshold is None else threshold
        if not 1 <= k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
        if not -1.0 <= t <= 1.0:
            raise InvalidRequest(f"threshold must be between -1 and 1, got {t}")
        return k, t

    # ------------------------------------------------------------------ search
    def search(
        self,
        images: Sequence[DecodedImage],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        heads: Sequence[Head] = (),
        ticket: Ticket | None = None,
    ) -> list[list[SearchedFace]]:
        """Every face of every image, with its nearest stored faces (and the answers of `heads`). One engine
        call, one store call."""
        k, t = self.search_params(top_k, threshold)
        faces = self._analyze(images, heads, ticket)
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

    def analyze(
        self, images: Sequence[DecodedImage], *, heads: Sequence[Head], ticket: Ticket | None = None
    ) -> list[list[AnalyzedFace]]:
        """Every face of every image with the answers of `heads`; no search, nothing stored. One engine call,
        without the recognizer: nothing here needs an embedding."""
        faces = self._analyze(images, heads, ticket, embed=False)
        return [
            [AnalyzedFace(face, *original_coords(face, image)) for face in row]
            for image, row in zip(images, faces, strict=True)
        ]

    # ------------------------------------------------------------------ index
    def index(self, items: Sequence[ImageToIndex], *, ticket: Ticket | None = None) -> list[IndexedImage]:
        """Detect and embed every image in one engine call (shared with concurrent requests), write thumbnails,
        then upsert all points in one store call (replacing only as each item asks, see ImageToIndex)."""
        faces = self._analyze([item.image for item in items], (), ticket)
        return self.store_faces(items, faces)

    def store_faces(self, items: Sequence[ImageToIndex], faces: Sequence[Sequence[Face]]) -> list[IndexedImage]:
        points, results = self.prepare_points(items, faces)
        try:
            self.write_points(points, results)
        except BaseException:
            self.abandon(results)
            raise
        return results

    def prepare_points(
        self, items: Sequence[ImageToIndex], faces: Sequence[Sequence[Face]]
    ) -> tuple[list[FacePoint], list[IndexedImage]]:
        """Points and thumbnails for every face; nothing is written to the store yet (see write_points).
        Ingest jobs call this per engine batch and write the points of many batches at once, so that only
        the points, not the decoded images, wait for the next upsert."""
        now = time.time()
        points: list[FacePoint] = []
        results: list[IndexedImage] = []
        for item, row in zip(items, faces, strict=True):
            result = IndexedImage(file=item.file, ids=[], replaced=[], origin=item.origin, replace=item.replace)
            results.append(result)
            try:
                for index, face in enumerate(row):
                    pid = point_id(item.content_hash, index)
                    bbox, _ = original_coords(face, item.image)
                    result.staged[pid] = self.thumbs.stage(
                        pid,
                        encode_jpeg(crop_thumbnail(item.image.pixels, tuple(face.bbox), size=self.settings.thumb_size)),
                    )
                    payload: dict[str, Any] = {
                        "file": item.file,
                        "face_index": index,
                        "bbox": bbox,
                        "det_score": round(face.det_score, 4),
                        "thumb": pid,
                        "ingested_at": now,
                        "model": self.engine.pack.name,
                        "content_hash": item.content_hash,
                        "subject": item.subject,
                        "origin": item.origin.value,
                        **item.extra,
                    }
                    points.append(FacePoint(id=pid, vector=face.embedding, payload=payload))
                    result.ids.append(pid)
            except BaseException:
                self.abandon(results)
                raise
        return points, results

    def abandon(self, results: Sequence[IndexedImage]) -> None:
        """Remove the staged thumbnails of results that will not be written."""
        for result in results:
            self.thumbs.discard(result.staged.values())
            result.staged.clear()

    def write_points(self, points: Sequence[FacePoint], results: Sequence[IndexedImage]) -> None:
        """Upsert the points and move their thumbnails into place; then, for results that replace, remove the
        faces their file had from the same origin under other content. Atomic with respect to other writers of
        the same files (FileLocks). Idempotent: point ids are deterministic, so running it again after a failure
        half-way gives the same collection."""
        with self.file_locks.hold(r.file for r in results):
            stale: list[str] = []
            for result in results:
                if not result.replace:
                    continue
                current = set(result.ids)
                old = [
                    i
                    for i in self.store.find_ids(PointQuery(file=result.file, origin=result.origin))
                    if i not in current
                ]
                result.replaced = old
                stale.extend(old)
            self.store.upsert(points)
            for result in results:
                for pid, staged in result.staged.items():
                    self.thumbs.promote(pid, staged)
                result.staged.clear()
            if stale:
                self._delete(stale)

    # ------------------------------------------------------------------ delete
    def _delete(self, ids: Sequence[str], *, key: str | None = None) -> None:
        """Journaled first (a crash part-way is finished at the next start, or by a retried DELETE), then points,
        then thumbnails: a thumbnail without its point is never served meanwhile (thumbnail() checks the store).
        `key`: what a retried DELETE names (erasure_key); None for the stale faces of a replaced file."""
        token = self.erasures.begin(ids, key)
        self.store.delete(ids)
        for fid in ids:
            self.thumbs.delete(fid)
        self.erasures.finish(token)

    def _stored(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are points in the store."""
        present: set[str] = set()
        for start in range(0, len(ids), 1000):
            present |= {m.id for m in self.store.retrieve(ids[start : start + 1000])}
        return present

    def delete_face(self, face_id: str) -> None:
        """One face and its thumbnail; an erasure of it cut short is finished (not a 404)."""
        face_id = self.thumbs.validate_id(face_id)
        key = erasure_key(face_id=face_id)
        found = self.store.retrieve([face_id])
        if not found:
            if self.erasures.find(key) is None:
                raise NotFound(f"no face with id {face_id}")
            self._delete([face_id], key=key)  # its point is gone: what may be left is its thumbnail
            return
        with self.file_locks.hold([str(found[0].payload.get("file"))]):
            self._delete([face_id], key=key)

    def delete_where(self, query: PointQuery) -> list[str]:
        """Every face of one source file, or of one subject (erasure: points, then thumbnails). The same DELETE
        again finishes one that was cut short (a crash, a failing disk), and answers as the first did once it is
        complete (for RECEIPT_SECONDS)."""
        files = [query.file] if query.file is not None else []
        key = erasure_key(query)
        with self.file_locks.hold(files):
            ids = self.store.find_ids(query)
            earlier = self.erasures.find(key)
            if earlier is not None and (not earlier.finished or not ids):
                # Its faces no longer stored are finished here; one stored again since (the same photo uploaded
                # under another subject) belongs to that upload now and is left alone.
                present = self._stored(earlier.ids)
                ids = list(dict.fromkeys([*ids, *(i for i in earlier.ids if i not in present)]))
            if not ids:
                what = f"file {query.file!r}" if query.file is not None else f"subject {query.subject!r}"
                raise NotFound(f"no faces stored for {what}")
            self._delete(ids, key=key)
        return ids

    def delete_file(self, file: str) -> list[str]:
        return self.delete_where(PointQuery(file=file))

    def thumbnail(self, face_id: str) -> Path:
        """The thumbnail of a face that is in the store (an erased face's is never served)."""
        face_id = self.thumbs.validate_id(face_id)
        if not self.store.retrieve([face_id]):
            raise NotFound(f"no face with id {face_id}")
        return self.thumbs.existing(face_id)

    def settle_thumbnails(self) -> None:
        """At start-up, before any writer: thumbnails a crash left staged (see ThumbnailStore) and erasures a crash
        cut short (see ErasureJournal)."""
        self.thumbs.sweep_pending(self._stored)
        for erasure in self.erasures.unfinished():
            logger.warning("finishing an erasure of %d faces that was cut short", len(erasure.ids))
            for start in range(0, len(erasure.ids), 1000):
                self.store.delete(erasure.ids[start : start + 1000])
            for fid in erasure.ids:
                self.thumbs.delete(fid)
            self.erasures.finish(erasure.key)

    def sweep_orphans(self, stop: threading.Event) -> None:
        """Crops whose point is gone (see ThumbnailStore.sweep_orphans): a walk of THUMBS_DIR, run beside the
        service on a thread of its own (about 35 us a crop on 2 busy cores: half a minute at a million)."""
        try:
            self.thumbs.sweep_orphans(self._stored, stop=stop)
        except Exception as exc:  # the store closing under it, a folder unreadable: tried again at the next start
            if not stop.is_set():
                logger.warning("the sweep of crops without a face stopped: %s", exc)


class _EngineAnalyzer:
    """The engine as an Analyzer, for wirings without a request batcher (the CLI's local run, tests)."""

    def __init__(self, engine: FaceEngine) -> None:
        self.engine = engine

    def admit(self, images: int) -> Ticket | None:
        return None

    def analyze(
        self,
        images: Sequence[Image],
        *,
        heads: Sequence[FaceHead] = (),
        timeout: float | None = None,
        ticket: Ticket | None = None,
        embed: bool = True,
    ) -> list[list[Face]]:
        return self.engine.analyze_batch(images, heads=heads, timeout=timeout, embed=embed, source=CallSource.REQUESTS)
