"""Face quality (app.engine.quality) on real photos through the real engine: degraded copies score lower, the
batch computation equals the per-face one, sharpness is measured on the crop the recognizer embedded, size is in
the original's pixels (a reduced decode included), and the pose reads the keypoints' geometry."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.engine import FaceEngine
from app.engine.align import ARCFACE_TEMPLATE
from app.engine.quality import SHARPNESS_WINDOW, face_qualities, keypoint_pose, laplacian_variance
from app.faces import Face, FaceQuality
from app.imaging import DecodedImage, decode_image
from app.service import original_coords
from tests.support import Photos, large_face_jpeg, read_bgr


def decoded(pixels: np.ndarray) -> DecodedImage:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return decode_image(bytes(data), max_bytes=1 << 26, max_pixels=100_000_000)


def only_face(engine: FaceEngine, pixels: np.ndarray) -> Face:
    faces = engine.analyze_batch([decoded(pixels)])[0]
    assert len(faces) == 1, len(faces)
    return faces[0]


def quality(face: Face) -> FaceQuality:
    assert face.quality is not None
    return face.quality


def test_every_face_gets_a_record_in_range(engine: FaceEngine) -> None:
    images = [decoded(read_bgr(p)) for p in (Photos.yaoming, Photos.players, Photos.t1)]
    for row in engine.analyze_batch(images):
        assert row
        for face in row:
            q = quality(face)
            assert 0.0 <= q.score <= 1.0 and q.size > 0 and q.sharpness > 0 and not q.flagged
            assert q.det_score == pytest.approx(face.det_score, abs=1e-4)
            assert all(-90.0 <= a <= 90.0 for a in (q.yaw, q.pitch)) and -180.0 <= q.roll <= 180.0


def test_a_blurred_copy_scores_lower_than_the_original(engine: FaceEngine) -> None:
    pixels = read_bgr(Photos.yaoming)
    original = quality(only_face(engine, pixels))
    side = original.size
    scores = [original.score]
    for sigma_on_crop in (2.0, 4.0):  # sigma in pixels of the 112 px crop, scaled to the face's size
        blurred = cv2.GaussianBlur(pixels, (0, 0), sigmaX=sigma_on_crop * side / 112)
        q = quality(only_face(engine, blurred))
        assert q.sharpness < original.sharpness
        scores.append(q.score)
    assert scores[0] > scores[1] > scores[2], scores


def test_a_downscaled_copy_scores_lower_than_the_original(engine: FaceEngine) -> None:
    pixels = read_bgr(Photos.yaoming)
    original = quality(only_face(engine, pixels))
    h, w = pixels.shape[:2]
    small = cv2.resize(pixels, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    q = quality(only_face(engine, small))
    assert q.size == pytest.approx(original.size / 4, rel=0.15)
    assert q.score < original.score, (q, original)


def test_the_batch_result_equals_the_per_face_result(engine: FaceEngine) -> None:
    images = [decoded(read_bgr(p)) for p in (Photos.yaoming, Photos.players, Photos.t1)]
    faces = [(f, img.scale) for img, row in zip(images, engine.analyze_batch(images), strict=True) for f in row]
    assert len(faces) > 10
    crops = np.stack([f.crop for f, _ in faces])  # type: ignore[misc]
    kps = np.stack([f.kps for f, _ in faces])
    boxes = np.stack([f.bbox for f, _ in faces])
    dets = np.array([f.det_score for f, _ in faces])
    scales = np.array([s for _, s in faces])
    batch = face_qualities(crops, kps, boxes, dets, scales).records()
    single = [face_qualities(crops[i : i + 1], kps[i : i + 1], boxes[i : i + 1], dets[i : i + 1], scales[i : i + 1])
              .records()[0] for i in range(len(faces))]  # fmt: skip
    assert batch == single
    assert batch == [f.quality for f, _ in faces]  # what the engine attached


def test_sharpness_is_the_laplacian_variance_of_the_embedded_crop(engine: FaceEngine) -> None:
    for face in engine.analyze_batch([decoded(read_bgr(Photos.t1))])[0]:
        assert face.crop is not None
        rows, cols = SHARPNESS_WINDOW
        gray = cv2.cvtColor(face.crop, cv2.COLOR_BGR2GRAY).astype(np.float64)
        # cv2's own Laplacian (ksize 1: the 4-neighbour kernel) over the window: the textbook measure.
        reference = cv2.Laplacian(gray, cv2.CV_64F, ksize=1)[rows, cols].var()
        # cvtColor rounds the gray levels to bytes; ours keeps them in float: within a few percent.
        assert quality(face).sharpness == pytest.approx(reference, rel=0.05)
        assert quality(face).sharpness == pytest.approx(float(laplacian_variance(face.crop[None])[0]), abs=0.06)


def test_size_is_in_the_original_pixels_when_the_decode_is_reduced(engine: FaceEngine) -> None:
    image = decode_image(large_face_jpeg(), max_bytes=1 << 26, max_pixels=100_000_000, max_side=1000)
    assert image.scale > 1  # reduced: the detector saw a smaller image
    (face,) = engine.analyze_batch([image])[0]
    bbox, _ = original_coords(face, image)
    assert quality(face).size == pytest.approx(min(bbox[2] - bbox[0], bbox[3] - bbox[1]), abs=1.0)


def test_pose_of_the_template_and_of_turned_keypoints() -> None:
    yaw, pitch, roll = keypoint_pose(ARCFACE_TEMPLATE[None])
    assert abs(yaw[0]) < 1 and abs(roll[0]) < 1
    # A 2-D rotation of the face moves roll only.
    for degrees in (30.0, -60.0):
        m = cv2.getRotationMatrix2D((56.0, 56.0), -degrees, 1.0)  # cv2 turns counter-clockwise for positive
        turned = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
        y2, p2, r2 = keypoint_pose(turned[None])
        assert r2[0] == pytest.approx(degrees, abs=0.5)
        assert y2[0] == pytest.approx(yaw[0], abs=0.5) and p2[0] == pytest.approx(pitch[0], abs=0.5)
    # The nose moved sideways (the head turned) reads as yaw; moved up towards the eyes, as chin up.
    sideways = ARCFACE_TEMPLATE.copy()
    sideways[2, 0] += 10
    assert keypoint_pose(sideways[None])[0][0] > 20
    up = ARCFACE_TEMPLATE.copy()
    up[2, 1] -= 8
    assert keypoint_pose(up[None])[1][0] > pitch[0] + 10


def test_on_the_eval_set_degraded_copies_score_lower(engine: FaceEngine, eval_dir: Path) -> None:
    """A few labelled photos (bench/quality.py runs all 60): a strong blur, a 1/8 downscale and a 60 degree turn of
    each photo score below the original, as a person would rank them."""
    with (eval_dir / "labels.csv").open() as fh:
        names = [row["file"] for row in csv.DictReader(fh)][:6]
    for name in names:
        pixels = read_bgr(eval_dir / name)
        faces = engine.analyze_batch([decoded(pixels)])[0]
        original = quality(max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))))
        h, w = pixels.shape[:2]
        turned = cv2.warpAffine(pixels, cv2.getRotationMatrix2D((w / 2, h / 2), 60, 1.0), (w, h))
        copies = {
            "blur": cv2.GaussianBlur(pixels, (0, 0), sigmaX=4.0 * original.size / 112),
            "downscale": cv2.resize(pixels, (w // 8, h // 8), interpolation=cv2.INTER_AREA),
            "rotate": turned,
        }
        for kind, copy in copies.items():
            found = engine.analyze_batch([decoded(copy)])[0]
            best = max((quality(f).score for f in found), default=0.0)
            assert best < original.score or (kind == "downscale" and best <= original.score), (name, kind)
