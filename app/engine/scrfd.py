"""SCRFD pre- and post-processing over a whole batch: pure functions of numpy arrays, no session.

On a GPU the model runs in well under a millisecond per image and this CPU work is what bounds throughput, so
it is done once per batch where it can be: one input tensor written in place (no canvas copy, no per-image
blob), one threshold and gather per stride over every image, anchor centres computed once per canvas size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import cv2
import numpy as np

from app.engine.buffers import InputBuffer

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2  # anchors per feature-map cell in the SCRFD exports insightface ships
NMS_IOU = 0.4
# Small photos are scaled up to the detector's size, as insightface does, or SCRFD misses the small faces of a
# small group photo (players.jpg at 480 px: 16 faces of 19 at its own size); but by 2x at most: a tight face crop
# scaled up further holds a face too large for the model's anchors (a 112 px crop at 5.7x: no face found).
MAX_UPSCALE = 2.0
CANVAS_MULTIPLE = 32  # the largest stride: a canvas side must divide by it

# The input normalisation, (pixel - 127.5) / 128, as a table over the 256 byte values. Exact in float32 (a power
# of two divides), so the tensor equals cv2.dnn.blobFromImages(..., 1/128, mean 127.5) bit for bit.
_NORMALISED = ((np.arange(256, dtype=np.float32) - np.float32(127.5)) / np.float32(128.0)).reshape(1, 256)
_PADDING = _NORMALISED[0, 0]  # a black pixel: the letterbox's border


@dataclass(frozen=True, slots=True)
class Detections:
    """One image's faces, best score first, in the image's pixels."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32
    kps: np.ndarray  # (N, 5, 2) float32


def letterbox_size(
    height: int, width: int, det_size: tuple[int, int], max_upscale: float = MAX_UPSCALE
) -> tuple[int, int]:
    """(height, width) an image is scaled to: fit det_size (width, height), up by `max_upscale` at most."""
    scale = min(det_size[0] / width, det_size[1] / height, max_upscale)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _layout(
    images: Sequence[np.ndarray],
    det_size: tuple[int, int],
    fixed: bool,
    canvases: Sequence[tuple[int, int]] | None,
    upscale: Sequence[float] | None = None,
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Each image's scaled (height, width), and the canvas's (height, width). A fixed canvas (det_size) is
    needed to stack several images; one image alone gets the smallest of `canvases` ((width, height), smallest
    first) that holds it, or without them the smallest canvas (multiple of 32) that does, so the strip a
    landscape photo leaves free is not spent on padding. `upscale`: per image, the most it may be scaled up
    (None: MAX_UPSCALE each)."""
    limits = upscale if upscale is not None else [MAX_UPSCALE] * len(images)
    sizes = [
        letterbox_size(img.shape[0], img.shape[1], det_size, limit) for img, limit in zip(images, limits, strict=True)
    ]
    if fixed or len(images) > 1:
        return sizes, (det_size[1], det_size[0])
    new_h, new_w = sizes[0]
    if canvases:
        width, height = next(((w, h) for w, h in canvases if w >= new_w and h >= new_h), det_size)
        return sizes, (height, width)
    height, width = (-(-side // CANVAS_MULTIPLE) * CANVAS_MULTIPLE for side in sizes[0])
    return sizes, (height, width)


def _scaled(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == image.shape[:2]:
        return np.ascontiguousarray(image)
    # Bilinear, as insightface does: INTER_AREA cost ~11 ms per 2000 px photo against ~1 ms, with the same
    # identity accuracy (bench/identity.py).
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _scale_into(image: np.ndarray, view: np.ndarray) -> None:
    """`image` scaled to `view`'s size, written into it (a canvas row's top-left corner): no intermediate array."""
    if view.shape[:2] == image.shape[:2]:
        np.copyto(view, image)
        return
    out = cv2.resize(image, (view.shape[1], view.shape[0]), dst=view, interpolation=cv2.INTER_LINEAR)
    if not np.may_share_memory(out, view):  # OpenCV wrote elsewhere (a view it could not take as is)
        np.copyto(view, out)


def _each(place: Callable[[int], None], count: int, pool: Executor | None) -> None:
    """place(0) .. place(count - 1), on `pool`'s threads when given and there are several: the copies and OpenCV
    calls of a letterbox release the GIL, so a batch's images are placed on several cores at once."""
    if pool is None or count < 2:
        for i in range(count):
            place(i)
    else:
        for _ in pool.map(place, range(count)):  # raises the first error of a placement
            pass


def letterbox_input(
    images: Sequence[np.ndarray],
    det_size: tuple[int, int],
    *,
    fixed: bool,
    rows: int = 0,
    canvases: Sequence[tuple[int, int]] | None = None,
    upscale: Sequence[float] | None = None,
    pixels: bool,
) -> tuple[tuple[int, ...], type, float]:
    """The (shape, dtype, border value) of the input letterbox_images (`pixels`) or letterbox_batch builds for
    these images: what a reused buffer (app.engine.buffers) must be to take them."""
    _, canvas = _layout(images, det_size, fixed, canvases, upscale)
    return _input(canvas, max(rows, len(images)), pixels=pixels)


def _input(canvas: tuple[int, int], rows: int, *, pixels: bool) -> tuple[tuple[int, ...], type, float]:
    height, width = canvas
    if pixels:
        return (rows, height, width, 3), np.uint8, 0.0
    return (rows, 3, height, width), np.float32, float(_PADDING)


def _output(out: InputBuffer | None, shape: tuple[int, ...], dtype: type, blank: float, images: int) -> np.ndarray:
    """The array to letterbox `images` images into: `out`'s, its later rows made blank, or a new one. Either way
    the caller writes each image's rows whole, border included."""
    if out is None:
        array: np.ndarray = np.empty(shape, dtype=dtype)
        array[images:] = blank
        return array
    if out.array.shape != shape or out.array.dtype != dtype or out.blank != blank:
        raise ValueError(f"buffer {out.array.shape} {out.array.dtype} cannot take a letterbox of {shape} {dtype}")
    return out.ready(images)


def letterbox_batch(
    images: Sequence[np.ndarray],
    det_size: tuple[int, int],
    *,
    fixed: bool,
    rows: int = 0,
    canvases: Sequence[tuple[int, int]] | None = None,
    upscale: Sequence[float] | None = None,
    out: InputBuffer | None = None,
    pool: Executor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The detector's input for a batch of BGR images: (N, 3, H, W) float32, RGB, normalised, each image scaled
    into the top-left corner of its canvas (black border), and per image the scale from its pixels to the
    canvas's (float32, as the decode divides float32 coordinates by it). `fixed`: the det_size canvas even for
    one image; `canvases`: those one image may go on (see _layout). `rows`: the tensor's batch size when more
    than the images (a fixed batch size), the rows past them all border. `out`: a reused buffer of
    letterbox_input's shape to write into (else a new array). `pool`: threads to place the images on."""
    sizes, canvas_size = _layout(images, det_size, fixed, canvases, upscale)
    shape, dtype, blank = _input(canvas_size, max(rows, len(images)), pixels=False)
    blob = _output(out, shape, dtype, blank, len(images))

    def place(i: int) -> None:
        new_h, new_w = sizes[i]
        planes = cv2.split(_scaled(images[i], (new_h, new_w)))  # B, G, R
        for channel in range(3):  # written straight into the tensor: RGB order, normalised by table look-up
            cv2.LUT(planes[2 - channel], _NORMALISED, dst=blob[i, channel, :new_h, :new_w])
        blob[i, :, new_h:, :] = _PADDING
        blob[i, :, :new_h, new_w:] = _PADDING

    _each(place, len(images), pool)
    return blob, _scales(images, sizes)


def letterbox_images(
    images: Sequence[np.ndarray],
    det_size: tuple[int, int],
    *,
    fixed: bool,
    rows: int = 0,
    canvases: Sequence[tuple[int, int]] | None = None,
    upscale: Sequence[float] | None = None,
    out: InputBuffer | None = None,
    pool: Executor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """letterbox_batch's canvas as pixels, (N, H, W, 3) uint8 BGR with a black border, for a detector whose graph
    normalises its input itself (app.engine.graph.with_image_input: a quarter of the bytes to build and to copy
    to a GPU)."""
    sizes, canvas_size = _layout(images, det_size, fixed, canvases, upscale)
    shape, dtype, blank = _input(canvas_size, max(rows, len(images)), pixels=True)
    canvas = _output(out, shape, dtype, blank, len(images))

    def place(i: int) -> None:
        new_h, new_w = sizes[i]
        _scale_into(images[i], canvas[i, :new_h, :new_w])
        canvas[i, new_h:] = 0
        canvas[i, :new_h, new_w:] = 0

    _each(place, len(images), pool)
    return canvas, _scales(images, sizes)


def _scales(images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per image, its scale from its pixels to the canvas's (float32: the decode divides float32 coordinates)."""
    return np.array([new_h / image.shape[0] for image, (new_h, _) in zip(images, sizes, strict=True)], np.float32)


@functools.lru_cache(maxsize=64)
def anchor_centers(height: int, width: int, stride: int) -> np.ndarray:
    """(height * width * NUM_ANCHORS, 2) float32 x, y of every anchor of one stride's feature map, in canvas
    pixels; computed once per canvas size (read-only: shared by every call)."""
    ys, xs = np.mgrid[:height, :width]
    centers = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
    centers = np.repeat(centers, NUM_ANCHORS, axis=0)
    centers.flags.writeable = False
    return centers


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, best score first. One vectorised IoU per kept box (the loop
    runs once per face found, not per candidate)."""
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


def decode_batch(
    outputs: Sequence[np.ndarray],
    scales: np.ndarray,
    canvas: tuple[int, int],
    *,
    threshold: float,
    max_faces: int = 0,
    nms_iou: float = NMS_IOU,
) -> list[Detections]:
    """The faces of every image of a batch from SCRFD's 9 outputs (scores, box distances, keypoint offsets per
    stride; each (rows, anchors, k), or (anchors, k) from a model without a batch axis). `canvas` is the input's
    (height, width), `scales` letterbox_batch's, one per image: rows past them (padding) are ignored.
    max_faces: keep the best-scored ones only (0: all)."""
    count = len(scales)
    height, width = canvas
    found_image, found_scores, found_points = [], [], []
    for idx, stride in enumerate(STRIDES):
        centers = anchor_centers(height // stride, width // stride, stride)
        anchors = len(centers)
        scores = outputs[idx].reshape(-1)[: count * anchors]
        found = np.flatnonzero(scores >= threshold)  # every image at once, image-major
        if found.size == 0:
            continue
        image_of, anchor = np.divmod(found, anchors)
        at = centers[anchor]
        dist = outputs[idx + 3].reshape(-1, 4)[found] * stride
        kps = outputs[idx + 6].reshape(-1, 10)[found] * stride
        # x1, y1, x2, y2 then the 5 keypoints' x, y: one (n, 14) array, scaled and reordered in one go below
        points = np.empty((len(anchor), 14), dtype=np.float32)
        points[:, :2] = at - dist[:, :2]
        points[:, 2:4] = at + dist[:, 2:]
        points[:, 4:] = (kps.reshape(-1, 5, 2) + at[:, None, :]).reshape(-1, 10)
        found_image.append(image_of)
        found_scores.append(scores[found])
        found_points.append(points)
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    if not found_image:
        return [empty] * count
    image_of = np.concatenate(found_image)
    all_scores = np.concatenate(found_scores)
    all_points = np.concatenate(found_points)
    if count > 1:
        # Grouped by image, stride then anchor order within each (a stable sort): the order NMS breaks ties in,
        # as when each image was decoded alone.
        grouped = np.argsort(image_of, kind="stable")
        image_of, all_scores, all_points = image_of[grouped], all_scores[grouped], all_points[grouped]
    all_points /= scales[image_of][:, None]
    bounds = np.searchsorted(image_of, np.arange(count + 1))
    results = []
    for i in range(count):
        lo, hi = bounds[i], bounds[i + 1]
        if lo == hi:
            results.append(empty)
            continue
        points, scores = all_points[lo:hi], all_scores[lo:hi]
        keep = nms(points[:, :4], scores, nms_iou)
        if max_faces:
            keep = keep[:max_faces]  # bounds the recognizer's and the heads' work per image
        kept = points[keep]
        results.append(Detections(kept[:, :4], scores[keep], kept[:, 4:].reshape(-1, 5, 2)))
    return results
