"""5-point similarity alignment to the 112x112 ArcFace crop, and the pixels the crops are cut from."""

from __future__ import annotations

import cv2
import numpy as np

from app.imaging import DecodedImage

# ArcFace 112x112 reference landmarks (eyes, nose tip, mouth corners).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
CROP_SIZE = 112


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


def alignment_source(
    image: np.ndarray | DecodedImage, pixels: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, float]:
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
