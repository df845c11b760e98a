"""What every entry point may call (FaceServiceApi) and what it answers: the types that cross the service's
surface. FaceService (app.service.facade) implements it in the process that owns the engine and the store; in an
HTTP worker process (WORKERS > 1) the core's client does (app.core)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import MAX_TOP_K, Settings
from app.engine import Ticket
from app.errors import EngineBusy, ImageTooLarge, InvalidRequest, OceanoError
from app.faces import Face, FaceQuality
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
from app.store import CollectionInfo, Match, Origin, PointQuery


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """The engine as /status and /metrics show it: its providers and its inference slots now."""

    providers: list[str]
    concurrency: int  # GPU_CONCURRENCY
    in_use: int  # slots running a model now
    waiting: int  # callers waiting for a slot now
    estimated_wait: float | None  # seconds a request arriving now would wait (None: no request batcher)


# The payload keys a search's matches carry: what every answer shows of a match (the JSON and HTML search, /ws
# frames) and what app.people reads (the subject). A stored face's whole payload (its quality record, hashes,
# times) cost the search for nothing: top 10 of 1,000 faces 0.195 -> 0.162 ms, pickled matches 5.6 -> 1.5 KB.
MATCH_KEYS = ("file", "face_index", "subject")


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
class IndexedFace:
    """One face detected in an image to index: stored under `id`, or refused (QUALITY_POLICY=refuse) and why."""

    index: int  # its place among the image's faces (the point id's face index)
    bbox: list[float]  # in the original image's pixels
    det_score: float
    quality: FaceQuality | None
    id: str | None = None  # None: refused
    refused: str | None = None


@dataclass(slots=True)
class IndexedImage:
    file: str
    ids: list[str]
    replaced: list[str]
    origin: Origin = Origin.UPLOAD
    replace: bool = False
    staged: dict[str, Path] = field(default_factory=dict)  # thumbnails written, moved into place after the upsert
    faces: list[IndexedFace] = field(default_factory=list)  # every face detected, stored or refused

    @property
    def refused(self) -> list[IndexedFace]:
        return [f for f in self.faces if f.refused is not None]

    @property
    def flagged(self) -> int:
        """Faces stored with quality_flagged (under QUALITY_MIN, QUALITY_POLICY=flag)."""
        return sum(1 for f in self.faces if f.id is not None and f.quality is not None and f.quality.flagged)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def original_coords(face: Face, image: DecodedImage) -> tuple[list[float], list[list[float]]]:
    s = image.scale
    bbox = [round(float(v) * s, 1) for v in face.bbox]
    kps = [[round(float(x) * s, 1), round(float(y) * s, 1)] for x, y in face.kps]
    return bbox, kps


class FaceServiceApi(ABC):
    """What every entry point may call: FaceService itself, or (WORKERS > 1) its client in an HTTP worker
    process, which runs the per-request checks and decoding here and the rest in the core process (app.core).

    Upload checks, decoding and head selection are written here once: they need only the settings and the
    heads' specs."""

    settings: Settings
    heads: HeadRegistry
    # Whether admit() waits on another process (an HTTP worker's call to the core): callers on an event loop then
    # run it in a thread. In the process that owns the batcher it takes a lock for a moment: run inline.
    admit_waits: bool = False

    def __init__(self, *, settings: Settings, heads: HeadRegistry) -> None:
        self.settings = settings
        self.heads = heads
        self.decode_gate = PixelGate(int(settings.decode_megapixels * 1e6), timeout=settings.gpu_acquire_timeout)

    # ------------------------------------------------------------------ what the service runs
    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model pack's name (every answer names it)."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """The model pack's fingerprint: collections built with another one are refused."""

    @abstractmethod
    def engine_status(self) -> EngineStatus: ...

    @abstractmethod
    def runtime_info(self) -> dict[str, Any]:
        """What runs the models: providers and their options in force, batch sizes, warm-up seconds (/status)."""

    @abstractmethod
    def collection_info(self) -> CollectionInfo: ...

    @abstractmethod
    def store_healthy(self) -> bool: ...

    @abstractmethod
    def face_count(self) -> int:
        """Faces (vectors) in the collection."""

    # ------------------------------------------------------------------ admission
    @abstractmethod
    def refusal_at_door(self) -> EngineBusy | None:
        """The EngineBusy an upload arriving now gets before its body is read (counted as shed), or None when the
        work ahead fits in GPU_ACQUIRE_TIMEOUT (always None without a request batcher)."""

    @abstractmethod
    def admit(self, images: int = 1) -> Ticket | None:
        """A place in line for a request's images, taken before its uploads are decoded: EngineBusy at once when
        the engine is too busy to take them within GPU_ACQUIRE_TIMEOUT (None: no request batcher)."""

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

    def search_params(
        self, top_k: int | None, threshold: float | None, min_quality: float | None = None
    ) -> tuple[int, float]:
        k = self.settings.top_k if top_k is None else top_k
        t = self.settings.sim_threshold if threshold is None else threshold
        if not 1 <= k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
        if not -1.0 <= t <= 1.0:
            raise InvalidRequest(f"threshold must be between -1 and 1, got {t}")
        if min_quality is not None and not 0.0 <= min_quality <= 1.0:
            raise InvalidRequest(f"min_quality must be between 0 and 1, got {min_quality}")
        return k, t

    def select_heads(self, names: str | None) -> list[Head]:
        """Heads by comma-separated names (NoSuchHead names the available ones); None: the HEADS default."""
        return self.heads.select(names)

    # ------------------------------------------------------------------ the work
    @abstractmethod
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
        """Every face of every image, with its nearest stored faces (and the answers of `heads`); `min_quality`:
        only stored faces whose quality score is at least that (faces without one are left out)."""

    @abstractmethod
    def analyze(
        self, images: Sequence[DecodedImage], *, heads: Sequence[Head], ticket: Ticket | None = None
    ) -> list[list[AnalyzedFace]]:
        """Every face of every image with the answers of `heads`; no search, nothing stored."""

    @abstractmethod
    def index(self, items: Sequence[ImageToIndex], *, ticket: Ticket | None = None) -> list[IndexedImage]:
        """Detect, embed and store every face of every image (see ImageToIndex for what is replaced)."""

    @abstractmethod
    def delete_face(self, face_id: str) -> None: ...

    @abstractmethod
    def delete_where(self, query: PointQuery) -> list[str]:
        """Every face of one source file, or of one subject (erasure: points, then thumbnails)."""

    @abstractmethod
    def thumbnail(self, face_id: str) -> Path:
        """The thumbnail of a face that is in the store (an erased face's is never served)."""
