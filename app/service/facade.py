"""FaceService: the flow shared by every entry point (API, page, ingest jobs).

decode -> FaceEngine.analyze_batch -> VectorStore search / upsert (+ thumbnails). No HTTP here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.config import Settings
from app.engine import CallSource, FaceEngine, Image, Ticket
from app.errors import EngineBusy, NotFound
from app.faces import Face, FaceHead
from app.heads import Head, HeadRegistry
from app.imaging import DecodedImage, crop_thumbnail, encode_jpeg
from app.service.api import (
    MATCH_KEYS,
    AnalyzedFace,
    EngineStatus,
    FaceServiceApi,
    ImageToIndex,
    IndexedFace,
    IndexedImage,
    SearchedFace,
    original_coords,
)
from app.service.quality import mark_flagged, quality_payload, refusal
from app.store import (
    CollectionInfo,
    ErasureJournal,
    FaceFilter,
    FacePoint,
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

    def refusal_at_door(self) -> EngineBusy | None: ...

    def estimated_wait(self) -> float | None: ...

    def analyze(
        self,
        images: Sequence[Image],
        *,
        heads: Sequence[FaceHead] = (),
        timeout: float | None = None,
        ticket: Ticket | None = None,
        embed: bool = True,
    ) -> list[list[Face]]: ...


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


class FaceService(FaceServiceApi):
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
        super().__init__(settings=settings, heads=heads)
        self.engine = engine
        self.store = store
        self.thumbs = thumbs
        self.erasures = erasures
        self.analyzer: Analyzer = analyzer or _EngineAnalyzer(engine)
        self.file_locks = FileLocks()

    # ------------------------------------------------------------------ what the service runs
    @property
    def model_name(self) -> str:
        return self.engine.pack.name

    @property
    def fingerprint(self) -> str:
        return self.engine.fingerprint

    def engine_status(self) -> EngineStatus:
        gate = self.engine.gate
        return EngineStatus(
            providers=list(self.engine.providers),
            concurrency=gate.concurrency,
            in_use=gate.in_use,
            waiting=gate.waiting,
            estimated_wait=self.analyzer.estimated_wait(),
        )

    def collection_info(self) -> CollectionInfo:
        return self.store.info()

    def store_healthy(self) -> bool:
        return self.store.healthy()

    def face_count(self) -> int:
        return self.store.count()

    def refusal_at_door(self) -> EngineBusy | None:
        return self.analyzer.refusal_at_door()

    def runtime_info(self) -> dict[str, Any]:
        """What runs the models: providers and their options in force, batch sizes, warm-up seconds (/status)."""
        return {
            **self.engine.runtime_info(),
            "head_batch_sizes": {e.spec.name: list(e.head.batch_sizes) for e in self.heads.listings() if e.head},
        }

    def admit(self, images: int = 1) -> Ticket | None:
        return self.analyzer.admit(images)

    def _analyze(
        self, images: Sequence[DecodedImage], heads: Sequence[Head], ticket: Ticket | None = None, embed: bool = True
    ) -> list[list[Face]]:
        faces = self.analyzer.analyze(images, heads=heads, ticket=ticket, embed=embed)
        mark_flagged((f for row in faces for f in row), self.settings)
        return faces

    # ------------------------------------------------------------------ search
    def search(
        self,
        images: Sequence[DecodedImage],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        heads: Sequence[Head] = (),
        ticket: Ticket | None = None,
        min_quality: float | None = None,
    ) -> list[list[SearchedFace]]:
        """Every face of every image, with its nearest stored faces (and the answers of `heads`). One engine
        call, one store call (`min_quality` filters inside the index search)."""
        k, t = self.search_params(top_k, threshold, min_quality)
        faces = self._analyze(images, heads, ticket)
        flat = [f for row in faces for f in row]
        vectors = np.stack([f.embedding for f in flat]) if flat else np.zeros((0, self.engine.dim), np.float32)
        where = FaceFilter(min_quality=min_quality) if min_quality is not None else None
        matches = self.store.search(
            vectors, limit=k, threshold=t, hnsw_ef=max(self.settings.hnsw_ef, k), where=where, keys=MATCH_KEYS
        )
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
            mark_flagged(row, self.settings)  # ingest jobs run the engine themselves
            try:
                for index, face in enumerate(row):
                    bbox, _ = original_coords(face, item.image)
                    seen = IndexedFace(index, bbox, round(face.det_score, 4), face.quality)
                    result.faces.append(seen)
                    seen.refused = refusal(face.quality, self.settings)
                    if seen.refused is not None:
                        continue  # refused: no point, no thumbnail (its index stays unused: ids stay stable)
                    pid = seen.id = point_id(item.content_hash, index)
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
                        "model": self.model_name,
                        "content_hash": item.content_hash,
                        "subject": item.subject,
                        "origin": item.origin.value,
                        **quality_payload(face.quality, self.settings),
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

    def refusal_at_door(self) -> EngineBusy | None:
        return None

    def estimated_wait(self) -> float | None:
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
