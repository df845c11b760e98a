"""SCRFD face detector with 5 keypoints, batched when the model allows it."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import onnxruntime as ort

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


class ScrfdDetector:
    """SCRFD with 5 keypoints; runs a whole batch in one call when the model's batch axis allows it."""

    STRIDES = (8, 16, 32)
    NMS_IOU = 0.4

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        det_size: tuple[int, int],
        threshold: float,
        batch: int,
        fixed_canvas: bool = False,
        max_faces: int = 0,
    ) -> None:
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
        self.max_faces = max_faces  # 0: no cap
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
        """Scale to fit det_size, up by MAX_UPSCALE at most. A fixed canvas is needed to stack a batch; a single
        image gets the smallest canvas (multiple of 32) that holds it, so the strip a landscape photo leaves free
        is not spent on padding (faces cut by the image's edge may come out slightly differently)."""
        width, height = self.det_size
        h, w = image.shape[:2]
        scale = min(width / w, height / h, MAX_UPSCALE)
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
            chunk = images[start : start + self.batch]
            fixed = self.fixed_canvas or len(chunk) > 1
            boxed = [self._letterbox(img, fixed) for img in chunk]
            canvas_h, canvas_w = boxed[0][0].shape[:2]
            blob = cv2.dnn.blobFromImages(
                [b[0] for b in boxed], 1.0 / 128.0, (canvas_w, canvas_h), (127.5, 127.5, 127.5), swapRB=True
            )
            outs = self.session.run(self.output_names, {self.input_name: blob})
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
