"""SCRFD face detector with 5 keypoints, batched when the model allows it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from app.engine.model import OnnxModel
from app.engine.runtime import Runtime
from app.errors import ModelPackError


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


# Small photos are scaled up to the detector's size, as insightface does, or SCRFD misses the small faces of a
# small group photo (players.jpg at 480 px: 16 faces of 19 at its own size); but by 2x at most: a tight face crop
# scaled up further holds a face too large for the model's anchors (a 112 px crop at 5.7x: no face found).
MAX_UPSCALE = 2.0


# The canvases a single image is letterboxed onto on the CPU: the smallest of them that holds the scaled image. A
# few aspect ratios (square, 4:3, 3:2, 16:9, each way) fitted in DET_SIZE: a bounded set of input shapes, all
# warmed at start-up, that wastes little detector work on padding (the common photo shapes fit one closely). On a
# GPU, and for any batch of more than one image, the one canvas is DET_SIZE itself.
CANVAS_ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16))


def _up32(value: float) -> int:
    return -(-round(value) // 32) * 32


def aspect_canvases(det_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(width, height) of each CANVAS_ASPECTS canvas fitted in det_size, smallest area first."""
    width, height = det_size
    canvases = set()
    for aspect_w, aspect_h in CANVAS_ASPECTS:
        scale = min(width / aspect_w, height / aspect_h)
        canvases.add((min(width, _up32(aspect_w * scale)), min(height, _up32(aspect_h * scale))))
    return sorted(canvases, key=lambda c: (c[0] * c[1], c))


class ScrfdDetector(OnnxModel):
    """SCRFD with 5 keypoints; runs a whole chunk of images in one call when the model's batch axis allows it."""

    STRIDES = (8, 16, 32)
    NMS_IOU = 0.4
    REWRITE_BATCH_AXIS = False  # SCRFD's outputs are per-anchor arrays: _batch_axis_usable reads them

    def __init__(
        self,
        path: Path,
        *,
        runtime: Runtime,
        det_size: tuple[int, int],
        threshold: float,
        batch_sizes: Sequence[int] = (),
        canvases: Sequence[tuple[int, int]] | None = None,
        max_faces: int = 0,
    ) -> None:
        """`batch_sizes`: empty for 1 on the CPU, 1,4,16 on a GPU. `canvases`: (width, height) of the canvases one
        image may be letterboxed onto, each within det_size; None: det_size alone on a GPU (every new input shape
        costs a kernel search there), aspect_canvases(det_size) on the CPU."""
        self.det_size = det_size
        super().__init__(path, name=path.name, runtime=runtime, batch_sizes=batch_sizes)
        if len(self.output_names) != 9:
            raise ModelPackError(
                f"detector has {len(self.output_names)} outputs; a SCRFD model with keypoints (9 outputs) is required"
            )
        self.threshold = threshold
        self.max_faces = max_faces  # 0: no cap
        if canvases is None:
            canvases = [det_size] if self.on_gpu else aspect_canvases(det_size)
        if any(w > det_size[0] or h > det_size[1] or w % 32 or h % 32 for w, h in canvases):
            raise ValueError(f"detector canvases {canvases} must be multiples of 32 within DET_SIZE {det_size}")
        # The full canvas is always there: it holds any scaled image.
        self.canvases = sorted({*canvases, det_size}, key=lambda c: (c[0] * c[1], c))
        self.num_anchors = 2
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}

    def default_batch_sizes(self, on_gpu: bool) -> tuple[int, ...]:
        return (1, 4, 16) if on_gpu else (1,)  # batching the detector helps on a GPU only

    def _gpu_item_shape(self) -> tuple[int, ...] | None:
        return (3, self.det_size[1], self.det_size[0])  # the one canvas on a GPU

    def _batch_axis_usable(self) -> bool:
        batch_dim = self.session.get_inputs()[0].shape[0]
        return len(self.session.get_outputs()[0].shape) == 3 and not (isinstance(batch_dim, int) and batch_dim == 1)

    def input_shapes(self) -> Sequence[tuple[int, ...]]:
        """Batch 1 on each canvas; larger batches on the full canvas (a batch is stacked on one canvas)."""
        width, height = self.det_size
        shapes = [(1, 3, h, w) for w, h in self.canvases] if 1 in self.batch_sizes else []
        return shapes + [(size, 3, height, width) for size in self.batch_sizes if size > 1]

    def _anchor_centers(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centers:
            ys, xs = np.mgrid[:height, :width]
            centers = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
            self._centers[key] = np.repeat(centers, self.num_anchors, axis=0)
        return self._centers[key]

    def _letterbox(self, image: np.ndarray, fixed: bool) -> tuple[np.ndarray, float]:
        """Scale to fit det_size, up by MAX_UPSCALE at most. A batch is stacked on the full canvas; a single image
        gets the smallest of the canvases that holds it, so most of the strip a landscape photo leaves free is not
        spent on padding (faces cut by the image's edge may come out slightly differently)."""
        width, height = self.det_size
        h, w = image.shape[:2]
        scale = min(width / w, height / h, MAX_UPSCALE)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if not fixed:
            width, height = next((cw, ch) for cw, ch in self.canvases if cw >= new_w and ch >= new_h)
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        # Bilinear, as insightface does: INTER_AREA cost ~11 ms per 2000 px photo against ~1 ms, with the
        # same identity accuracy (bench/identity.py).
        resized = image if scale == 1.0 else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        canvas[:new_h, :new_w] = resized
        return canvas, new_h / h

    def detect(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: boxes (N, 4), scores (N,), keypoints (N, 5, 2) in the image's pixels."""
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for chunk in self.chunks(len(images)):
            boxed = [self._letterbox(img, chunk.size > 1) for img in images[chunk.start : chunk.stop]]
            canvas_h, canvas_w = boxed[0][0].shape[:2]
            blob = cv2.dnn.blobFromImages(
                [b[0] for b in boxed], 1.0 / 128.0, (canvas_w, canvas_h), (127.5, 127.5, 127.5), swapRB=True
            )
            outs = self.run_blob(blob, chunk.size)
            for i, (_, det_scale) in enumerate(boxed):
                per_image = [o[i] if self.batched else o for o in outs]
                results.append(self._decode(per_image, det_scale, canvas_w, canvas_h))
        return results

    def _decode(
        self, outs: list[np.ndarray], det_scale: float, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        keep = _nms(boxes, scores, self.NMS_IOU)  # best score first
        if self.max_faces:
            keep = keep[: self.max_faces]  # bounds the recognizer's and the heads' work per image
        return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), kps[keep].astype(np.float32)
