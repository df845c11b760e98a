"""FaceEngine: batched detect (SCRFD) -> 5-point align to 112x112 -> embed (ArcFace) -> heads, over many images.

The engine owns the model pack and its ONNX sessions and knows nothing of HTTP, storage or what a head is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.config import Settings
from app.engine.align import align_faces, alignment_source
from app.engine.detector import ScrfdDetector
from app.engine.model import OnnxModel, Shape, log_warm_up
from app.engine.observe import CallSource, EngineObserver, NullObserver
from app.engine.packs import ModelPack, resolve_pack
from app.engine.quality import face_qualities
from app.engine.recognizer import ArcFaceRecognizer
from app.engine.runtime import InferenceGate, Runtime
from app.engine.scrfd import MAX_UPSCALE
from app.faces import Face, FaceHead, FaceQuality
from app.imaging import DecodedImage

logger = logging.getLogger(__name__)

Image = np.ndarray | DecodedImage


def upscale_limit(image: Image) -> float:
    """The most the detector may scale `image` up: MAX_UPSCALE (small photos hold small faces), but never past
    the long side its caller reduced it to on purpose (DecodedImage.max_side)."""
    if not isinstance(image, DecodedImage) or image.max_side is None:
        return MAX_UPSCALE
    return min(MAX_UPSCALE, max(1.0, image.max_side / max(image.pixels.shape[:2])))


class FaceEngine:
    """Loads a pack once; `analyze_batch` is the one entry point for search, indexing and ingest."""

    def __init__(
        self,
        pack: ModelPack,
        *,
        runtime: Runtime,
        det_size: tuple[int, int],
        det_threshold: float,
        gate: InferenceGate,
        det_batch_sizes: Sequence[int] = (),
        rec_batch_sizes: Sequence[int] = (),
        max_faces: int = 0,
    ) -> None:
        """Loads the detector and the recognizer and warms every input shape they run at (`warm_up`) before
        returning: whoever builds an engine (the service, the ingest CLI, benchmarks) gets one that pays no
        first-shape cost later."""
        started = time.perf_counter()
        self.pack = pack
        self.gate = gate
        self.runtime = runtime
        self.detector = ScrfdDetector(
            pack.detector,
            runtime=runtime,
            det_size=det_size,
            threshold=det_threshold,
            max_faces=max_faces,
            batch_sizes=det_batch_sizes,
        )
        self.recognizer = ArcFaceRecognizer(pack.recognizer, runtime=runtime, batch_sizes=rec_batch_sizes)
        self.providers = self.detector.providers
        self.on_gpu = self.detector.on_gpu
        self.fingerprint = pack.fingerprint
        self.observer: EngineObserver = NullObserver()  # the HTTP layer installs its metrics here
        loaded = time.perf_counter() - started
        self.warm_up_s = log_warm_up("the face models", self.warm_up())
        logger.warning(
            "MODEL PACK IN USE: %s (detector %s, recognizer %s, %d-d embeddings) from %s on %s; loaded in %.1fs, "
            "warmed in %.1fs",
            pack.name,
            pack.detector.name,
            pack.recognizer.name,
            self.recognizer.dim,
            pack.directory,
            self.providers[0],
            loaded,
            self.warm_up_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings, gate: InferenceGate) -> FaceEngine:
        """The face models only; the classifier heads are loaded beside them (app.bootstrap.load_heads)."""
        pack = resolve_pack(settings)
        return cls(
            pack,
            runtime=Runtime.from_settings(settings),
            det_size=settings.det_size,
            det_threshold=settings.det_threshold,
            det_batch_sizes=settings.det_batch_sizes,
            rec_batch_sizes=settings.rec_batch_sizes,
            gate=gate,
            max_faces=settings.max_faces,
        )

    @property
    def models(self) -> dict[str, OnnxModel]:
        """The engine's ONNX models by role (benchmarks time them: OnnxModel.warm_up, time_run)."""
        return {"detector": self.detector, "recognizer": self.recognizer}

    @property
    def batch_sizes(self) -> list[int]:
        """Every batch size any face model runs at (bench.gpu times the engine's stages at each)."""
        return sorted({size for model in self.models.values() for size in model.batch_sizes})

    def warm_up(self) -> dict[str, dict[Shape, float]]:
        """Runs every input shape of each model once; seconds per shape, per model."""
        return {name: model.warm_up() for name, model in self.models.items()}

    def runtime_info(self) -> dict[str, Any]:
        """What runs the models (/status): providers and options in force, and each model's batch sizes."""
        return {
            **self.runtime.info(),
            "providers_in_use": self.providers,
            "batch_sizes": {name: list(model.batch_sizes) for name, model in self.models.items()},
            "detector_canvases": [list(c) for c in self.detector.canvases],
            "warm_up_s": round(self.warm_up_s, 3),
        }

    @property
    def dim(self) -> int:
        return self.recognizer.dim

    def analyze_batch(
        self,
        images: Sequence[Image],
        *,
        timeout: float | None = None,
        heads: Sequence[FaceHead] = (),
        source: CallSource = CallSource.OTHER,
        embed: bool = True,
    ) -> list[list[Face]]:
        """Detect, align and embed every face of every image, then run `heads` on them (answers in
        Face.attributes). All faces of the call are embedded in one batch, and each head runs once over them
        (both in chunks of REC_BATCH_SIZES). Raises EngineBusy when the gate is not free within `timeout`.
        Coordinates are in the pixels of each image (a DecodedImage's `pixels`). `embed=False` skips the
        recognizer (faces keep an empty `embedding`): for callers that only need boxes and heads."""
        asked = time.perf_counter()
        with self.gate.acquire(timeout):
            self.observer.waited(source, time.perf_counter() - asked)
            return self.analyze_holding_gate(images, heads=heads, source=source, embed=embed)

    def analyze_holding_gate(
        self,
        images: Sequence[Image],
        *,
        heads: Sequence[FaceHead] = (),
        source: CallSource = CallSource.OTHER,
        embed: bool = True,
    ) -> list[list[Face]]:
        """analyze_batch for a caller that already holds the gate (the request batcher)."""
        arrays = [img.pixels if isinstance(img, DecodedImage) else img for img in images]
        started = time.perf_counter()
        detections = self.detector.detect(arrays, [upscale_limit(img) for img in images])
        self._observed("detector", source, len(arrays), started)
        # Every face of the batch aligned in one call (transforms solved together); the crops are cut from the
        # finer pixels where a reduced decode has them, with the keypoints scaled to those pixels.
        sources: list[np.ndarray] = []
        points: list[np.ndarray] = []
        for image, pixels, (boxes, _, kps) in zip(images, arrays, detections, strict=True):
            source_image, ratio = alignment_source(image, pixels, boxes)
            sources.extend([source_image] * len(kps))
            points.append(kps * ratio)
        aligned = align_faces(sources, np.concatenate(points) if points else np.zeros((0, 5, 2), np.float32))
        # Quality of every face of the call at once, its sharpness on the very crops embedded below (cut from the
        # finer decode for small faces), its size in the original's pixels.
        qualities = iter(self._qualities(images, detections, aligned))
        # A list of (112, 112, 3) views: what the recognizer and the heads take.
        crops = list(aligned)
        faces: list[list[Face]] = []
        next_crop = iter(crops)
        for boxes, scores, kps in detections:
            faces.append(
                [
                    Face(bbox=box, kps=face_kps, det_score=float(score), crop=next(next_crop), quality=next(qualities))
                    for box, score, face_kps in zip(boxes, scores, kps, strict=True)
                ]
            )
        for head in heads:
            started = time.perf_counter()
            head.run(arrays, faces)
            self._observed(head.name, source, len(crops), started)
        if not embed:
            return faces
        started = time.perf_counter()
        embeddings = self.recognizer.embed(crops)
        self._observed("recognizer", source, len(crops), started)
        flat = [f for row in faces for f in row]
        for face, emb in zip(flat, embeddings, strict=True):
            face.embedding = emb
        return faces

    @staticmethod
    def _qualities(
        images: Sequence[Image], detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], crops: np.ndarray
    ) -> list[FaceQuality]:
        """app.engine.quality over every face of the call, in the order of `crops`."""
        if not len(crops):
            return []
        scales = [img.scale if isinstance(img, DecodedImage) else 1.0 for img in images]
        return face_qualities(
            crops,
            np.concatenate([kps for _, _, kps in detections]),
            np.concatenate([boxes for boxes, _, _ in detections]),
            np.concatenate([scores for _, scores, _ in detections]),
            np.concatenate([np.full(len(boxes), s) for s, (boxes, _, _) in zip(scales, detections, strict=True)]),
        ).records()

    def _observed(self, model: str, source: CallSource, size: int, started: float) -> None:
        if size:  # a model given nothing ran nothing (no face: no recognizer or head run)
            self.observer.model_batch(model, source, size, time.perf_counter() - started)
