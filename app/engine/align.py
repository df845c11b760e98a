"""5-point similarity alignment to the 112x112 ArcFace crop, and the pixels the crops are cut from."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from app.imaging import DecodedImage

# ArcFace 112x112 reference landmarks (eyes, nose tip, mouth corners).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
CROP_SIZE = 112


def similarity_transforms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarities (rotation, uniform scale, translation) mapping each face's points src[i]
    (N, K, 2) onto dst (K, 2), for all N faces at once: (N, 2, 3) float64 matrices for cv2.warpAffine.

    Umeyama's result in its 2-D closed form: a scaled rotation is [[a, -b], [b, a]], and least squares over
    (a, b) gives a = sum(s.d) / sum(|s|^2), b = sum(s x d) / sum(|s|^2) on the centred points; no SVD, no
    reflection case. Points all at one place (no spread) map with scale 1 and no rotation, as Umeyama's does."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=1), dst.mean(axis=0)  # (N, 2), (2,)
    s0, d0 = src - mu_s[:, None, :], dst - mu_d
    spread = (s0**2).sum(axis=(1, 2))
    dot = (s0 * d0).sum(axis=(1, 2))
    cross = (s0[..., 0] * d0[:, 1] - s0[..., 1] * d0[:, 0]).sum(axis=1)
    flat = spread == 0
    denominator = np.where(flat, 1.0, spread)
    a = np.where(flat, 1.0, dot / denominator)
    b = np.where(flat, 0.0, cross / denominator)
    m = np.empty((len(src), 2, 3), dtype=np.float64)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a, -b, b, a
    m[:, :, 2] = mu_d - np.einsum("nij,nj->ni", m[:, :, :2], mu_s)
    return m


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """similarity_transforms for one set of points: a 2x3 matrix for cv2.warpAffine."""
    return similarity_transforms(np.asarray(src)[None], dst)[0]


def align_faces(sources: Sequence[np.ndarray], kps: np.ndarray) -> np.ndarray:
    """The 112x112 ArcFace crops of N faces, (N, 112, 112, 3) uint8: face i cut from sources[i] (the same image
    repeated for the faces of one photo) by its keypoints kps[i] (N, 5, 2). The transforms are solved for all
    faces at once; each crop is warped straight into the result."""
    transforms = similarity_transforms(kps, ARCFACE_TEMPLATE)
    crops = np.empty((len(transforms), CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    for source, m, crop in zip(sources, transforms, crops, strict=True):
        cv2.warpAffine(source, m, (CROP_SIZE, CROP_SIZE), dst=crop, borderValue=(0, 0, 0))
    return crops


def align_face(image: np.ndarray, kps: np.ndarray) -> np.ndarray:
    return align_faces([image], np.asarray(kps)[None])[0]


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
