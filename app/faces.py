"""Types shared by the engine and the heads: a detected face, and what a head must offer the engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class FaceQuality:
    """How fit a face is for recognition (app.engine.quality computes it; README "Face quality").

    `size`: the shorter side of the face's box in the original image's pixels; `sharpness`: the variance of the
    Laplacian over the middle of the aligned 112x112 crop the recognizer embedded (gray levels); `yaw`, `pitch`,
    `roll`: the head's pose in degrees estimated from the five keypoints; `det_score`: the detector's score;
    `score`: one number in [0, 1] combining them. `flagged`: under QUALITY_MIN (the service sets it)."""

    score: float
    size: float
    sharpness: float
    yaw: float
    pitch: float
    roll: float
    det_score: float
    flagged: bool = False


@dataclass(slots=True)
class Face:
    """One detected face. Coordinates are in the pixels of the array the engine was given."""

    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    kps: np.ndarray  # (5, 2)
    det_score: float
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (D,) L2-normalised
    crop: np.ndarray | None = None  # (112, 112, 3) aligned BGR crop, shared with the heads
    attributes: dict[str, Any] = field(default_factory=dict)  # the heads' answers, e.g. {"emotion": {...}}
    quality: FaceQuality | None = None  # set by the engine for every face it finds


class FaceHead(Protocol):
    """A classifier run on the faces of an engine call (app.heads.Head). The engine runs the heads it is given
    inside its inference gate, without knowing what they are: so the engine never imports app.heads."""

    @property
    def name(self) -> str: ...

    def run(self, images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> None:
        """Add this head's answer to `Face.attributes` of every face; `faces[i]` are found in `images[i]`."""
        ...
