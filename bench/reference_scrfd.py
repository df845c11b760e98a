"""The per-image SCRFD pre/post-processing and alignment that app.engine.scrfd and app.engine.align replaced, kept
as the reference that tests/engine/test_vectorised.py compares the batch-wide code with (same results) and that
bench/stages.py times it against: a per-image letterbox onto a zeroed canvas and cv2.dnn.blobFromImages, a
per-image decode of each stride, the same greedy NMS, and an SVD-based Umeyama transform per face."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np

DET_SIZE = (640, 640)
STRIDES = (8, 16, 32)


def old_letterbox(
    image: np.ndarray, fixed: bool, canvases: Sequence[tuple[int, int]] | None = None
) -> tuple[np.ndarray, float]:
    width, height = DET_SIZE
    h, w = image.shape[:2]
    scale = min(width / w, height / h, 2.0)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if not fixed and canvases:
        width, height = next((cw, ch) for cw, ch in canvases if cw >= new_w and ch >= new_h)
    elif not fixed:
        width, height = -(-new_w // 32) * 32, -(-new_h // 32) * 32
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    resized = image if scale == 1.0 else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[:new_h, :new_w] = resized
    return canvas, new_h / h


def old_blob(
    images: Sequence[np.ndarray], fixed: bool, canvases: Sequence[tuple[int, int]] | None = None
) -> tuple[np.ndarray, list[float]]:
    boxed = [old_letterbox(img, fixed or len(images) > 1, canvases) for img in images]
    canvas_h, canvas_w = boxed[0][0].shape[:2]
    blob = cv2.dnn.blobFromImages(
        [b[0] for b in boxed], 1.0 / 128.0, (canvas_w, canvas_h), (127.5, 127.5, 127.5), swapRB=True
    )
    return blob, [b[1] for b in boxed]


def old_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
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


@functools.cache
def old_anchor_centers(height: int, width: int, stride: int) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return np.repeat((np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32), 2, axis=0)


def old_decode(
    outs: list[np.ndarray], det_scale: float, width: int, height: int, threshold: float, max_faces: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    all_scores, all_boxes, all_kps = [], [], []
    for idx, stride in enumerate(STRIDES):
        scores = outs[idx].reshape(-1)
        keep = np.nonzero(scores >= threshold)[0]
        if keep.size == 0:
            continue
        centers = old_anchor_centers(height // stride, width // stride, stride)[keep]
        dist = outs[idx + 3].reshape(-1, 4)[keep] * stride
        kps = outs[idx + 6].reshape(-1, 10)[keep] * stride
        all_scores.append(scores[keep])
        all_boxes.append(np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1))
        all_kps.append(kps.reshape(-1, 5, 2) + centers[:, None, :])
    if not all_scores:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    scores = np.concatenate(all_scores)
    boxes = np.concatenate(all_boxes) / det_scale
    kps = np.concatenate(all_kps) / det_scale
    keep = old_nms(boxes, scores, 0.4)
    if max_faces:
        keep = keep[:max_faces]
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), kps[keep].astype(np.float32)


def old_similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    src, dst = src.astype(np.float64), dst.astype(np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d0.T @ s0 / len(src))
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
