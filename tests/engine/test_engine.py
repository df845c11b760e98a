"""FaceEngine with the real bundled ONNX models on real photos."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from app.config import Settings
from app.engine import BUNDLED_PACK, PRODUCTION_PACK, FaceEngine, InferenceGate, resolve_pack
from app.engine.align import align_face, alignment_source, similarity_transform
from app.errors import EngineBusy, ModelPackError
from tests.support import (
    INSIGHTFACE_IMAGES,
    VECTRON_DIR,
    ShapeRecorder,
    gate_held,
    match_boxes,
    read_bgr,
    small_photos,
)


def test_finds_every_face_and_embeddings_are_unit_vectors(engine: FaceEngine, photos) -> None:  # type: ignore[no-untyped-def]
    faces = engine.analyze_batch([read_bgr(photos.t1), read_bgr(photos.yaoming)])
    assert len(faces[0]) == 6  # the insightface sample t1.jpg shows six people
    assert len(faces[1]) == 1
    for face in faces[0] + faces[1]:
        assert face.embedding.shape == (engine.dim,) and face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.crop is not None and face.crop.shape == (112, 112, 3)
        assert 0.5 <= face.det_score <= 1.0


def test_same_person_is_nearest(engine: FaceEngine, photos) -> None:  # type: ignore[no-untyped-def]
    yao, team = engine.analyze_batch([read_bgr(photos.yaoming), read_bgr(photos.players)])
    sims = np.array([f.embedding @ yao[0].embedding for f in team])
    best = int(sims.argmax())
    others = np.delete(sims, best)
    assert sims[best] > 0.45, sims
    assert sims[best] - others.max() > 0.25, sims


def test_batch_equals_one_by_one(engine: FaceEngine, photos) -> None:  # type: ignore[no-untyped-def]
    images = [read_bgr(photos.t1), read_bgr(photos.players), read_bgr(photos.tom_hanks)]
    together = engine.analyze_batch(images)
    alone = [engine.analyze_batch([img])[0] for img in images]
    for a, b in zip(together, alone, strict=True):
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            assert np.allclose(fa.bbox, fb.bbox, atol=1e-3)
            assert float(fa.embedding @ fb.embedding) > 0.9999


class RecordingSession:
    """An ONNX session that records the batch size of every detector call."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.batches: list[int] = []

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.batches.extend(len(blob) for blob in feeds.values())
        return self._session.run(names, feeds)


def touches_padding(bbox: np.ndarray, image: np.ndarray, margin: float = 4.0) -> bool:
    """The face reaches the right or bottom edge of the photo, where the letterbox pads the canvas."""
    h, w = image.shape[:2]
    return bool(bbox[2] > w - margin or bbox[3] > h - margin)


def test_batched_detector_equals_one_image_at_a_time(
    engine: FaceEngine,
    photos,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DET_BATCH_SIZES=1,3 on the CPU: the batched path (the full letterbox canvas, one session call per chunk,
    outputs split per image) finds what single-image calls find. The bundled SCRFD has a dynamic batch axis."""
    batched = FaceEngine.from_settings(Settings(det_batch_sizes="1,3"), InferenceGate(1, 5.0))
    assert batched.detector.batched and batched.detector.batch_sizes == (1, 3)
    assert engine.detector.batch_sizes == (1,)  # the reference: one image per call, each on its smallest canvas
    recorder = RecordingSession(batched.detector.session)
    monkeypatch.setattr(batched.detector, "session", recorder)
    # sizes and shapes differ: landscape and portrait over 640 px, small photos under it
    images = [read_bgr(p) for p in (photos.t1, photos.players, photos.gdp, photos.yaoming, photos.tom_hanks)]
    together = batched.analyze_batch(images)
    assert recorder.batches == [3, 1, 1]  # the CPU decomposes 5 images into sizes of the set, without padding
    alone = [engine.analyze_batch([img])[0] for img in images]
    assert [len(row) for row in together] == [len(row) for row in alone] == [6, 22, 5, 1, 1]
    for image, row, reference in zip(images, together, alone, strict=True):
        for face in row:
            match = min(reference, key=lambda f: float(np.abs(f.bbox - face.bbox).sum()))
            assert np.abs(match.bbox - face.bbox).max() <= 2.0, (face.bbox, match.bbox)
            if touches_padding(face.bbox, image):
                # A face cut by the photo's bottom or right edge sees the canvas padding, and the batch's 640 px
                # canvas pads it differently from a single image's smallest canvas (Tom_Hanks_54745.png, a 112 px
                # crop that is all face: 128 px). Its landmarks move ~3 px and its embedding to cos ~0.96; the
                # detector's "same results" holds only away from the padding. Bounded so it cannot grow.
                assert np.abs(match.kps - face.kps).max() <= 4.0
                assert float(face.embedding @ match.embedding) > 0.93
            else:
                assert np.abs(match.kps - face.kps).max() <= 1.0
                assert float(face.embedding @ match.embedding) > 0.99


# insightface's alignment calls a scikit-image method deprecated there: not ours to fix.
INSIGHTFACE_WARNINGS = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


@INSIGHTFACE_WARNINGS
def test_agrees_with_insightface_reference(engine: FaceEngine, photos, insightface_app: Any) -> None:  # type: ignore[no-untyped-def]
    """Our detector decoding and alignment against insightface's own FaceAnalysis on the same files."""
    image = read_bgr(photos.t1)
    ours = engine.analyze_batch([image])[0]
    theirs = insightface_app.get(image)
    assert len(ours) == len(theirs)
    for face in ours:
        match = min(theirs, key=lambda f: float(np.abs(f.bbox - face.bbox).sum()))
        assert np.abs(match.bbox - face.bbox).max() < 4.0
        assert float(face.embedding @ match.normed_embedding) > 0.95


# insightface scales every photo up to its 640 px canvas; Oceano by 2x at most (MAX_UPSCALE). On this 112 px crop
# that is all face, 5.7 times up, insightface finds nothing while Oceano finds the face: a known, wanted
# difference, pinned.
SMALL_PHOTO_DIFFERENCES = {"Tom_Hanks_54745.png": (1, 0)}  # name: (Oceano's faces, insightface's)
# A face scored within this margin of the detector threshold may be found on one side only: the canvases differ
# (Oceano pads to the smallest multiple of 32, insightface to 640x640), and so do scores in the last digit.
THRESHOLD_MARGIN = 0.05


def assert_small_photos_agree(engine: FaceEngine, reference: Any, paths: list[Path]) -> int:
    """Per photo: the same number of faces, one-to-one boxes with IoU >= 0.9, embeddings alike. Returns the
    number of faces compared."""
    compared = 0
    for path in paths:
        image = read_bgr(path)
        ours, theirs = engine.analyze_batch([image])[0], reference.get(image)
        if path.name in SMALL_PHOTO_DIFFERENCES:
            assert (len(ours), len(theirs)) == SMALL_PHOTO_DIFFERENCES[path.name], path.name
            continue
        floor = engine.detector.threshold + THRESHOLD_MARGIN
        ours = [f for f in ours if f.det_score >= floor]
        theirs = [f for f in theirs if float(f.det_score) >= floor]
        assert len(ours) == len(theirs), (path.name, len(ours), len(theirs))
        pairs = match_boxes([f.bbox for f in ours], [f.bbox for f in theirs])
        assert len(pairs) == len(ours), path.name
        for i, j, iou in pairs:
            # IoU >= 0.9, or, for faces of a few dozen pixels, corners within a tenth of the side (a pixel or two
            # of canvas rounding is a large share of them)
            side = float(min(ours[i].bbox[2] - ours[i].bbox[0], ours[i].bbox[3] - ours[i].bbox[1]))
            corners = float(np.abs(ours[i].bbox - theirs[j].bbox).max())
            assert iou >= 0.9 or corners <= max(2.0, 0.1 * side), (path.name, ours[i].bbox, theirs[j].bbox, iou)
            if side >= 24:  # a face of a dozen pixels has no identity to agree on: only its box is compared
                assert float(ours[i].embedding @ theirs[j].normed_embedding) > 0.9, path.name
        compared += len(pairs)
    return compared


@INSIGHTFACE_WARNINGS
def test_small_wheel_photos_detect_as_insightface_does(engine: FaceEngine, insightface_app: Any) -> None:
    """Photos under 640 px are scaled up (Oceano: by 2x at most, on the smallest canvas that holds them;
    insightface: to 640): the faces found must be insightface's."""
    paths = small_photos(INSIGHTFACE_IMAGES) + small_photos(VECTRON_DIR)
    names = {p.name for p in paths}
    assert {"yaoming.jpg", "Tom_Hanks_54745.png", "mask_green.jpg"} <= names, names
    assert assert_small_photos_agree(engine, insightface_app, paths) >= 1


@INSIGHTFACE_WARNINGS
def test_reduced_group_photos_detect_as_insightface_does(
    engine: FaceEngine,
    insightface_app: Any,
    photos,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """Group photos reduced under 640 px: many small faces in a small photo. Before MAX_UPSCALE Oceano never
    scaled a photo up and missed faces insightface finds (players.jpg at 480 px: 16 of 19; gdp.jpg at 320 px: 3 of
    5)."""
    paths = []
    for source in (photos.t1, photos.players, photos.gdp):
        image = read_bgr(source)
        for side in (600, 480, 320):
            factor = side / max(image.shape[:2])
            path = tmp_path / f"{source.stem}-{side}.png"
            assert cv2.imwrite(str(path), cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA))
            paths.append(path)
    assert assert_small_photos_agree(engine, insightface_app, paths) >= 3 * (6 + 16 + 3)


@INSIGHTFACE_WARNINGS
def test_small_eval_photos_detect_as_insightface_does(engine: FaceEngine, insightface_app: Any, eval_dir: Path) -> None:
    paths = small_photos(eval_dir)
    assert len(paths) >= 5, "the eval set's photos under 640 px"
    assert assert_small_photos_agree(engine, insightface_app, paths) >= len(paths)


def test_small_faces_in_a_reduced_decode_are_aligned_from_finer_pixels(engine: FaceEngine, photos) -> None:  # type: ignore[no-untyped-def]
    """A big JPEG is decoded reduced for the detector; its small faces are cropped from a finer decode, so their
    embeddings match those of the full-size image."""
    from app.imaging import decode_image

    image = read_bgr(photos.t1)
    big = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    decoded = decode_image(data, max_bytes=1 << 26, max_pixels=10**8)
    assert decoded.factor == 4
    reduced = engine.analyze_batch([decoded])[0]
    full = engine.analyze_batch([big])[0]
    assert len(reduced) == len(full) == 6
    boxes = np.stack([f.bbox for f in reduced])
    source, ratio = alignment_source(decoded, decoded.pixels, boxes)
    assert ratio > 1 and source.shape[1] > decoded.pixels.shape[1]  # a finer decode was used for the crops
    smallest = float(np.min(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    assert smallest * ratio >= 112 or source.shape[1] == big.shape[1]
    for face in reduced:
        match = min(full, key=lambda f: float(np.abs(f.bbox - face.bbox * decoded.scale).sum()))
        assert float(face.embedding @ match.embedding) > 0.9


def test_an_image_reduced_on_purpose_is_not_scaled_back_up(
    engine: FaceEngine,
    photos,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/ws predict decodes a frame at PREDICT_MAX_SIDE (320 px) to answer fast. MAX_UPSCALE scaled it back up to
    640 x 480 for the detector: 4x the pixels, 15 ms per predict instead of 5, and 65 predictions/s over 8 clients
    instead of 160 (bench.stream). A reduced image is now detected at its size, on a canvas of the half-size set;
    the same pixels given as a photo of that size are still scaled up (small photos hold small faces)."""
    from app.imaging import decode_image

    frame = cv2.resize(read_bgr(photos.t1), (640, 480), interpolation=cv2.INTER_AREA)
    data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    reduced = decode_image(data, max_bytes=1 << 24, max_pixels=10**8, max_side=320)
    assert reduced.pixels.shape[:2] == (240, 320) and reduced.max_side == 320
    inputs = ShapeRecorder(engine.detector.session)
    monkeypatch.setattr(engine.detector, "session", inputs)
    found = engine.analyze_batch([reduced])[0]
    as_photo = engine.analyze_batch([reduced.pixels])[0]
    canvas = inputs.shapes[0][-2:] if inputs.shapes[0][1] == 3 else inputs.shapes[0][1:3]  # float NCHW or uint8 NHWC
    assert canvas == (256, 320), inputs.shapes  # 4:3 at half DET_SIZE (320 x 240, up to a multiple of 32)
    assert inputs.shapes[1] != inputs.shapes[0] and max(inputs.shapes[1]) == 640, inputs.shapes
    assert len(found) >= 3 and len(as_photo) >= len(found)
    for face in found:  # boxes in the reduced pixels, mapped to the frame's by `scale`, as before
        assert face.bbox[2] <= 320 + 1 and face.bbox[3] <= 240 + 1


def test_no_face(engine: FaceEngine) -> None:
    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([x % 256, y % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    assert engine.analyze_batch([image]) == [[]]


def test_similarity_transform_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], scale * rot, atol=1e-9) and np.allclose(m[:, 2], shift, atol=1e-9)


def test_aligned_crop_puts_eyes_on_the_template(engine: FaceEngine, photos) -> None:  # type: ignore[no-untyped-def]
    image = read_bgr(photos.yaoming)
    face = engine.analyze_batch([image])[0][0]
    crop = align_face(image, face.kps)
    again = engine.detector.detect([np.pad(crop, ((56, 56), (56, 56), (0, 0)))])[0]
    assert len(again[0]) == 1
    eyes = again[2][0][:2] - 56
    assert np.allclose(eyes, [[38.3, 51.7], [73.5, 51.5]], atol=4.0)


def test_gate_refuses_when_busy(photos) -> None:  # type: ignore[no-untyped-def]
    gate = InferenceGate(1, 0.2)
    engine = FaceEngine.from_settings(Settings(), gate)
    with gate_held(gate), pytest.raises(EngineBusy) as info:
        engine.analyze_batch([read_bgr(photos.yaoming)])
    assert info.value.retry_after >= 1
    assert len(engine.analyze_batch([read_bgr(photos.yaoming)])[0]) == 1


def test_pack_resolution(tmp_path: Path) -> None:
    assert resolve_pack(Settings(model_root=tmp_path)).name == BUNDLED_PACK
    with pytest.raises(ModelPackError, match="not found"):
        resolve_pack(Settings(model_root=tmp_path, model_name="buffalo_l"))
    # MODEL_NAME=auto prefers antelopev2 when its folder holds a pack (real ONNX files under antelopev2 names).
    pack_dir = tmp_path / PRODUCTION_PACK
    pack_dir.mkdir()
    os.symlink(VECTRON_DIR / "scrfd_500m_bnkps.onnx", pack_dir / "scrfd_10g_bnkps.onnx")
    os.symlink(VECTRON_DIR / "w600k_mbf.onnx", pack_dir / "glintr100.onnx")
    pack = resolve_pack(Settings(model_root=tmp_path))
    assert pack.name == PRODUCTION_PACK and pack.recognizer.name == "glintr100.onnx"
    assert pack.fingerprint != resolve_pack(Settings(model_name="bundled")).fingerprint
    (pack_dir / "glintr100.onnx").unlink()
    with pytest.raises(ModelPackError, match="recognizer"):
        resolve_pack(Settings(model_root=tmp_path))
