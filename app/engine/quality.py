"""Face quality at detection: size, sharpness, pose and detector score, and one score in [0, 1], for every face
of an engine call at once (numpy over the batch; no loop per face or per pixel).

The score is a product of four factors, each in [0, 1]: a face is only as good as its worst shortfall (a sharp
frontal face 12 pixels wide is useless, so is a large one blurred into a smear), and a product keeps each factor's
meaning: 0.5 is "half as good" whichever one says it. Each factor is a ramp between two constants, on a log scale
for size and sharpness (halving a face's pixels costs the same at any size). The constants were measured on the
labelled eval set and degraded copies of it (`python -m bench.quality --calibrate`, README "Face quality").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.faces import FaceQuality


# --------------------------------------------------------------------------------------------- the constants
@dataclass(frozen=True, slots=True)
class ScoreConstants:
    """Where each factor of the score starts to fall (*_hi, *_ok) and where it reaches 0 (*_lo, *_max).

    size: the box's shorter side in the original's pixels; past size_hi more pixels change the embedding little
    (a photo downscaled to a 68 px face keeps 0.97 cosine similarity to the original's). sharpness: the variance
    of the Laplacian (gray levels squared) over SHARPNESS_WINDOW of the crop. det: the detector's score
    (DET_THRESHOLD's default, 0.5, scores 0). yaw, pitch, roll in degrees: alignment undoes roll, but the
    detector's keypoints (and so the crop) drift on a face far from upright, which costs the embedding about what
    a 1/8 downscale does at 60 degrees (cosine similarity to the upright original 0.87 both).

    Size, sharpness, det and roll were chosen by `python -m bench.quality --calibrate`: of a grid over the ramps'
    ends, the constants that rank the eval set's faces and their degraded copies most like their embeddings'
    similarity to the original's. Yaw and pitch are not fitted: no 2-D copy of a photo turns a head, and the eval
    set's faces are near frontal (yaw within 13 degrees for 80 % of them); their limits are set wide, so that
    only a face well past three-quarter view loses much."""

    size_lo: float = 16.0
    size_hi: float = 64.0
    sharpness_lo: float = 15.0
    sharpness_hi: float = 80.0
    det_lo: float = 0.5
    det_hi: float = 0.7
    yaw_ok: float = 25.0
    yaw_max: float = 75.0
    pitch_ok: float = 20.0
    pitch_max: float = 60.0
    roll_ok: float = 20.0
    roll_max: float = 120.0


SCORE = ScoreConstants()

# The middle of the aligned crop, (rows, columns): eyebrows to chin, cheek to cheek. The rest of the crop is hair,
# background or, for a face at the image's edge, black border: strong edges that say nothing of the face's focus.
SHARPNESS_WINDOW = (slice(32, 104), slice(24, 88))
_GRAY = np.array([0.114, 0.587, 0.299], dtype=np.float32)  # BGR -> luma (ITU-R BT.601, as cv2.cvtColor)

# Pose from the five keypoints with a rigid face model: the nose tip stands NOSE_DEPTH_EYES x the eye distance in
# front of the eyes' and mouth's plane (yaw moves it sideways by depth x sin(yaw) while the eye distance shrinks by
# cos(yaw)), and NOSE_DEPTH_HEIGHT x the eyes-to-mouth height (pitch). Generic adult proportions (nose tip about
# 32 mm out, eyes 63 mm apart, eyes to mouth 70 mm): rough estimates (no 3-D ground truth here to check them),
# enough for a pose penalty; a 2-D rotation of the photo moves roll only (tests/engine/test_quality.py).
NOSE_DEPTH_EYES = 0.5
NOSE_DEPTH_HEIGHT = 0.45
# Where the nose tip sits between the eyes' line (0) and the mouth's line (1) in a frontal face: the median over the
# eval set's photos (press photos, mostly frontal at eye level). SCRFD puts it lower than the ArcFace template's
# 0.495, which would read every frontal face as 11 degrees chin down.
NOSE_HEIGHT_FRONTAL = 0.581


@dataclass(frozen=True, slots=True)
class QualityArrays:
    """The quality of N faces as arrays (N,), in the order given: what `face_qualities` turns into records."""

    score: np.ndarray
    size: np.ndarray
    sharpness: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    det_score: np.ndarray

    def records(self) -> list[FaceQuality]:
        columns = zip(
            self.score.tolist(),
            self.size.tolist(),
            self.sharpness.tolist(),
            self.yaw.tolist(),
            self.pitch.tolist(),
            self.roll.tolist(),
            self.det_score.tolist(),
            strict=True,
        )
        return [
            FaceQuality(
                score=round(score, 4),
                size=round(size, 1),
                sharpness=round(sharp, 1),
                yaw=round(yaw, 1),
                pitch=round(pitch, 1),
                roll=round(roll, 1),
                det_score=round(det, 4),
            )
            for score, size, sharp, yaw, pitch, roll, det in columns
        ]


def laplacian_variance(crops: np.ndarray) -> np.ndarray:
    """(N,) the variance of the 4-neighbour Laplacian (cv2.Laplacian's ksize=1 kernel) of each crop's gray levels
    over SHARPNESS_WINDOW; crops (N, 112, 112, 3) uint8 BGR. One array expression over the whole batch."""
    rows, cols = SHARPNESS_WINDOW
    # One pixel of margin around the window for the neighbours.
    gray = crops[:, rows.start - 1 : rows.stop + 1, cols.start - 1 : cols.stop + 1].astype(np.float32) @ _GRAY
    lap = gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:] - 4.0 * gray[:, 1:-1, 1:-1]
    return lap.reshape(len(crops), -1).var(axis=1) if len(crops) else np.zeros(0, np.float32)


def keypoint_pose(kps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(yaw, pitch, roll) in degrees of N faces from their keypoints (N, 5, 2): left eye, right eye, nose, left and
    right mouth corners (image left/right). Roll: the eye line's angle (positive: clockwise in the image). Yaw:
    positive when the nose is right of the face's midline (the head turned to the image's right). Pitch: positive
    when the nose sits high between eyes and mouth (chin up)."""
    kps = np.asarray(kps, dtype=np.float64)
    eye_line = kps[:, 1] - kps[:, 0]
    roll = np.arctan2(eye_line[:, 1], eye_line[:, 0])
    # Keypoints turned by -roll about the eyes' midpoint: the eye line level.
    cos, sin = np.cos(roll)[:, None], np.sin(roll)[:, None]
    centred = kps - kps[:, :2].mean(axis=1, keepdims=True)
    x = centred[..., 0] * cos + centred[..., 1] * sin
    y = -centred[..., 0] * sin + centred[..., 1] * cos
    eyes = np.maximum(np.hypot(eye_line[:, 0], eye_line[:, 1]), 1e-6)
    midline = x[:, [0, 1, 3, 4]].mean(axis=1)
    yaw = np.arctan((x[:, 2] - midline) / eyes / NOSE_DEPTH_EYES)
    height = y[:, 3:].mean(axis=1)  # eyes at 0 after centring
    nose_height = y[:, 2] / np.where(np.abs(height) < 1e-6, 1e-6, height)
    pitch = np.arctan((NOSE_HEIGHT_FRONTAL - nose_height) / NOSE_DEPTH_HEIGHT)
    return np.degrees(yaw), np.degrees(pitch), np.degrees(roll)


def _ramp(value: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((value - low) / (high - low), 0.0, 1.0)


def _pose_factor(angle: np.ndarray, ok: float, worst: float) -> np.ndarray:
    return 1.0 - _ramp(np.abs(angle), ok, worst)


def combined_score(
    size: np.ndarray,
    sharpness: np.ndarray,
    yaw: np.ndarray,
    pitch: np.ndarray,
    roll: np.ndarray,
    det_score: np.ndarray,
    constants: ScoreConstants = SCORE,
) -> np.ndarray:
    """The single score in [0, 1]: the product of the size, sharpness, pose and detector factors (module doc)."""
    c = constants
    size_factor = _ramp(np.log(np.maximum(size, 1.0)), math.log(c.size_lo), math.log(c.size_hi))
    sharp_factor = _ramp(np.log(np.maximum(sharpness, 1e-6)), math.log(c.sharpness_lo), math.log(c.sharpness_hi))
    pose_factor = (
        _pose_factor(yaw, c.yaw_ok, c.yaw_max)
        * _pose_factor(pitch, c.pitch_ok, c.pitch_max)
        * _pose_factor(roll, c.roll_ok, c.roll_max)
    )
    det_factor = _ramp(det_score, c.det_lo, c.det_hi)
    score: np.ndarray = size_factor * sharp_factor * pose_factor * det_factor
    return score


def face_qualities(
    crops: np.ndarray, kps: np.ndarray, boxes: np.ndarray, det_scores: np.ndarray, scales: np.ndarray
) -> QualityArrays:
    """The quality of N faces: `crops` (N, 112, 112, 3) the aligned crops the recognizer embeds, `kps` (N, 5, 2)
    and `boxes` (N, 4) in the pixels the detector saw, `scales` (N,) from those pixels to the original's (a reduced
    decode's factor), `det_scores` (N,)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    size = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * np.asarray(scales, dtype=np.float64)
    size = np.maximum(size, 0.0)
    sharpness = laplacian_variance(crops).astype(np.float64)
    yaw, pitch, roll = keypoint_pose(np.asarray(kps).reshape(-1, 5, 2))
    det = np.asarray(det_scores, dtype=np.float64)
    return QualityArrays(
        score=combined_score(size, sharpness, yaw, pitch, roll, det),
        size=size,
        sharpness=sharpness,
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        det_score=det,
    )
