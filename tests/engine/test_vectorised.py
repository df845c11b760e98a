"""The batch-wide SCRFD pre/post-processing (app.engine.scrfd) and the batched alignment (app.engine.align) give
what the per-image code they replaced gave, on real photos through the real bundled models.

The replaced code is the reference, kept in bench/reference_scrfd.py (bench/stages.py times it against the new)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest

from app.config import Settings
from app.engine import FaceEngine
from app.engine.align import ARCFACE_TEMPLATE, CROP_SIZE, align_faces, similarity_transforms
from app.engine.detector import ScrfdDetector, aspect_canvases
from app.engine.graph import IMAGE_INPUT, with_image_input
from app.engine.runtime import Runtime
from app.engine.scrfd import anchor_centers, decode_batch, letterbox_batch, letterbox_images, nms
from app.imaging import DecodedImage
from bench.reference_scrfd import DET_SIZE, old_blob, old_decode, old_similarity_transform
from tests.support import VECTRON_DIR, Photos, read_bgr


# ------------------------------------------------------------------ the old pipeline on the engine's sessions
def old_analyze(engine: FaceEngine, images: Sequence[np.ndarray], fixed: bool) -> list[list[tuple[np.ndarray, ...]]]:
    """The old per-image pipeline on the engine's own sessions: (box, score, kps, crop, embedding) per face."""
    det = engine.detector
    blob, det_scales = old_blob(images, fixed, det.canvases)
    outs = det.session.run(det.output_names, {det.input_name: blob})
    rows = []
    for i, det_scale in enumerate(det_scales):
        per_image = [o[i] for o in outs]
        boxes, scores, kps = old_decode(per_image, det_scale, blob.shape[3], blob.shape[2], det.threshold, 0)
        crops = [
            cv2.warpAffine(images[i], old_similarity_transform(k, ARCFACE_TEMPLATE), (CROP_SIZE, CROP_SIZE))
            for k in kps
        ]
        embeddings = engine.recognizer.embed(crops)
        rows.append(list(zip(boxes, scores, kps, crops, embeddings, strict=True)))
    return rows


# ------------------------------------------------------------------ the comparisons
def photo_set() -> list[np.ndarray]:
    """Real photos of every kind the letterbox meets: landscape and portrait over 640 px (scaled down), a small
    one (scaled up, by 2x at most), a 112 px crop that is all face, a 6-face group, and a 640 px one (scale 1)."""
    t1 = read_bgr(Photos.t1)
    return [
        t1,
        read_bgr(Photos.players),
        read_bgr(Photos.gdp),
        read_bgr(Photos.yaoming),
        read_bgr(Photos.tom_hanks),
        cv2.resize(t1, (640, round(640 * t1.shape[0] / t1.shape[1]))),
    ]


@pytest.mark.parametrize("fixed", [False, True], ids=["own-canvas", "fixed-canvas"])
def test_letterbox_tensor_equals_blob_from_images(fixed: bool) -> None:
    for canvases in (None, aspect_canvases(DET_SIZE)):
        for image in photo_set():  # one image at a time: its own smallest canvas unless fixed
            blob, scales = letterbox_batch([image], DET_SIZE, fixed=fixed, canvases=canvases)
            reference, ref_scales = old_blob([image], fixed, canvases)
            assert blob.shape == reference.shape and np.array_equal(blob, reference)
            assert np.allclose(scales, ref_scales, rtol=1e-6)
    images = photo_set()  # a batch: one 640x640 canvas, every image in its top-left corner
    blob, scales = letterbox_batch(images, DET_SIZE, fixed=fixed)
    reference, ref_scales = old_blob(images, fixed)
    assert blob.shape == (len(images), 3, 640, 640) and np.array_equal(blob, reference)
    assert np.allclose(scales, ref_scales, rtol=1e-6)


def assert_same_faces(new: Sequence[tuple[np.ndarray, ...]], old: Sequence[tuple[np.ndarray, ...]]) -> None:
    assert len(new) == len(old)
    for (box, score, kps, crop, emb), (o_box, o_score, o_kps, o_crop, o_emb) in zip(new, old, strict=True):
        assert np.allclose(box, o_box, atol=1e-4) and np.allclose(kps, o_kps, atol=1e-4)
        assert abs(float(score) - float(o_score)) <= 1e-6
        assert np.abs(crop.astype(int) - o_crop.astype(int)).max() <= 1  # a rounding step of warpAffine at most
        assert np.allclose(emb, o_emb, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 6], ids=["one-per-call", "batch-of-6"])
def test_engine_faces_equal_the_per_image_code(engine: FaceEngine, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Boxes, scores, keypoints, crops and embeddings of the whole engine against the old code on the same
    sessions: one image per call (the smallest of the detector's canvases that holds it) and six in one detector
    call (the full 640 canvas)."""
    monkeypatch.setattr(engine.detector, "batch_sizes", (1, batch) if batch > 1 else (1,))
    images = photo_set()
    found = engine.analyze_batch(images)
    new = [[(f.bbox, f.det_score, f.kps, f.crop, f.embedding) for f in row] for row in found]
    if batch == 1:
        old = [old_analyze(engine, [image], fixed=False)[0] for image in images]
    else:
        old = old_analyze(engine, images, fixed=True)
    assert [len(row) for row in new] == [6, 22, 5, 1, 1, 6]
    for new_row, old_row in zip(new, old, strict=True):
        assert_same_faces(new_row, old_row)  # type: ignore[arg-type]


def test_decode_batch_equals_per_image_decode_with_a_low_threshold(engine: FaceEngine) -> None:
    """Many candidates per image (threshold 0.05: hundreds, overlapping) through the batch-wide decode and the
    old per-image decode, max_faces cap included: the same faces in the same order."""
    det = engine.detector
    images = photo_set()
    blob, scales = letterbox_batch(images, DET_SIZE, fixed=True)
    outs = det.session.run(det.output_names, {det.input_name: blob})
    for threshold, cap in ((0.05, 0), (0.05, 3), (0.5, 0), (1.01, 0)):
        found = decode_batch(outs, scales, (640, 640), threshold=threshold, max_faces=cap)
        for i, d in enumerate(found):
            boxes, scores, kps = old_decode([o[i] for o in outs], float(scales[i]), 640, 640, threshold, cap)
            assert d.boxes.shape == boxes.shape and d.boxes.dtype == np.float32
            assert np.allclose(d.boxes, boxes, atol=1e-4) and np.array_equal(d.scores, scores)
            assert np.allclose(d.kps, kps, atol=1e-4)
        if threshold > 1:
            assert all(len(d.boxes) == 0 for d in found)


def test_batched_similarity_transforms_equal_umeyama_by_svd(engine: FaceEngine) -> None:
    """The 2-D closed form against the SVD-based Umeyama, on the keypoints of real faces and on random point
    sets (mirrored ones too, where Umeyama's reflection case applies), and the degenerate set of one point."""
    faces = [f for row in engine.analyze_batch(photo_set()) for f in row]
    rng = np.random.default_rng(7)
    random_sets = rng.uniform(-50, 300, (200, 5, 2))
    mirrored = ARCFACE_TEMPLATE[None] * np.array([-1.0, 1.0]) + rng.normal(0, 2, (20, 5, 2))
    sets = np.concatenate([np.stack([f.kps for f in faces]), random_sets, mirrored, np.full((1, 5, 2), 3.0)])
    batched = similarity_transforms(sets, ARCFACE_TEMPLATE)
    reference = np.stack([old_similarity_transform(s, ARCFACE_TEMPLATE) for s in sets])
    assert np.allclose(batched, reference, atol=1e-9, rtol=1e-9)


def test_align_faces_cuts_each_face_from_its_own_source() -> None:
    """Faces of several images in one call: each crop comes from its own source image."""
    a, b = read_bgr(Photos.yaoming), read_bgr(Photos.t1)
    kps = np.stack([ARCFACE_TEMPLATE + 20, ARCFACE_TEMPLATE * 2, ARCFACE_TEMPLATE + 40]).astype(np.float32)
    crops = align_faces([a, b, b], kps)
    assert crops.shape == (3, CROP_SIZE, CROP_SIZE, 3) and crops.dtype == np.uint8
    for crop, source, points in zip(crops, (a, b, b), kps, strict=True):
        expected = cv2.warpAffine(source, old_similarity_transform(points, ARCFACE_TEMPLATE), (CROP_SIZE, CROP_SIZE))
        assert np.abs(crop.astype(int) - expected.astype(int)).max() <= 1
    assert align_faces([], np.zeros((0, 5, 2), np.float32)).shape == (0, CROP_SIZE, CROP_SIZE, 3)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.6, 0.9, 0.7, 0.5], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]


def test_anchor_centers_are_cached_per_canvas_and_read_only() -> None:
    first = anchor_centers(80, 80, 8)
    assert anchor_centers(80, 80, 8) is first and not first.flags.writeable
    assert first.shape == (80 * 80 * 2, 2) and first[2].tolist() == [8.0, 0.0]


def test_a_reduced_decode_aligns_from_finer_pixels_in_the_batch(engine: FaceEngine) -> None:
    """A batch mixing a photo decoded reduced (crops from a finer decode) with plain arrays: each face's crop comes
    from its own image's pixels at the right ratio (compared with aligning it alone)."""
    from app.imaging import decode_image

    big = cv2.resize(read_bgr(Photos.t1), None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    decoded: DecodedImage = decode_image(data, max_bytes=1 << 26, max_pixels=10**8)
    yao = read_bgr(Photos.yaoming)
    together = engine.analyze_batch([yao, decoded, yao])
    alone = [engine.analyze_batch([image])[0] for image in (yao, decoded, yao)]
    for row, ref in zip(together, alone, strict=True):
        assert len(row) == len(ref)
        for face, other in zip(row, ref, strict=True):
            assert face.crop is not None and other.crop is not None
            assert np.array_equal(face.crop, other.crop)
            assert np.allclose(face.embedding, other.embedding, atol=1e-5)


def test_padding_rows_are_blank_and_ignored_by_the_decode(engine: FaceEngine) -> None:
    """A batch padded to a fixed size (rows): the extra rows are all border, and the decode answers for the
    images only, as without padding."""
    det = engine.detector
    images = photo_set()[:3]
    blob, scales = letterbox_batch(images, DET_SIZE, fixed=True, rows=8)
    plain, _ = letterbox_batch(images, DET_SIZE, fixed=True)
    assert blob.shape[0] == 8 and np.array_equal(blob[:3], plain)
    assert np.all(blob[3:] == np.float32(-127.5 / 128))
    padded = decode_batch(det.session.run(det.output_names, {det.input_name: blob}), scales, (640, 640), threshold=0.5)
    alone = decode_batch(det.session.run(det.output_names, {det.input_name: plain}), scales, (640, 640), threshold=0.5)
    assert len(padded) == len(alone) == 3
    for a, b in zip(padded, alone, strict=True):
        assert np.allclose(a.boxes, b.boxes, atol=1e-4) and np.allclose(a.kps, b.kps, atol=1e-4)


def test_a_detector_taking_images_finds_what_the_float_tensor_finds(engine: FaceEngine, tmp_path: Path) -> None:
    """The SCRFD graph rewritten to take uint8 BGR images (app.engine.graph, for GPU sessions): the detector
    feeds it letterbox_images' pixels, whose normalisation is letterbox_batch's tensor exactly, and finds the same
    faces, one image on its own canvas and a batch on the fixed one."""
    images = photo_set()
    for fixed, chunk in ((False, images[:1]), (True, images)):
        pixels, scales = letterbox_images(chunk, DET_SIZE, fixed=fixed, rows=len(chunk) + 1)
        blob, blob_scales = letterbox_batch(chunk, DET_SIZE, fixed=fixed, rows=len(chunk) + 1)
        normalised = (pixels[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 128.0
        assert np.array_equal(normalised, blob) and np.array_equal(scales, blob_scales)
    det = engine.detector
    model = with_image_input(onnx.load(str(VECTRON_DIR / "scrfd_500m_bnkps.onnx")), mean=127.5, std=128.0)
    rewritten = tmp_path / "scrfd_image_input.onnx"
    onnx.save(model, str(rewritten))
    runtime = Runtime.from_settings(Settings())
    taking_images = ScrfdDetector(rewritten, runtime=runtime, det_size=DET_SIZE, threshold=det.threshold)
    assert taking_images.input_name == IMAGE_INPUT
    floats = ScrfdDetector(
        VECTRON_DIR / "scrfd_500m_bnkps.onnx", runtime=runtime, det_size=DET_SIZE, threshold=det.threshold
    )
    for batch in (1, len(images)):
        taking_images.batch_sizes = floats.batch_sizes = (1, batch) if batch > 1 else (1,)
        for (boxes, scores, kps), (f_boxes, f_scores, f_kps) in zip(
            taking_images.detect(images), floats.detect(images), strict=True
        ):
            assert boxes.shape == f_boxes.shape
            assert np.allclose(boxes, f_boxes, atol=1e-3) and np.allclose(kps, f_kps, atol=1e-3)
            assert np.allclose(scores, f_scores, atol=1e-5)


@pytest.mark.parametrize("build", [letterbox_images, letterbox_batch])
def test_a_letterbox_placed_on_threads_equals_one_placed_in_turn(build: Any) -> None:
    """The detector places a batch's images on its canvas on several threads (app.engine.detector.placing_pool):
    the same tensor, bit for bit, as placing them one after another, for photos scaled down, up and not at all;
    an error placing one image is raised to the caller."""
    images = photo_set()
    with ThreadPoolExecutor(3) as pool:
        threaded, scales = build(images, DET_SIZE, fixed=True, rows=8, pool=pool)
        in_turn, in_turn_scales = build(images, DET_SIZE, fixed=True, rows=8)
        assert np.array_equal(threaded, in_turn) and np.array_equal(scales, in_turn_scales)
        two_channels = np.zeros((480, 640, 2), np.uint8)  # fails while placed (copy, resize or channel split)
        with pytest.raises((ValueError, IndexError, cv2.error)):
            build([*images[:2], two_channels], DET_SIZE, fixed=True, pool=pool)
