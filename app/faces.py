"""Types shared by the engine and the heads: a detected face, and what a head must offer the engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(slots=True)
class Face:
    """One detected face. Coordinates are in the pixels of the array the engine was given."""

    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    kps: np.ndarray  # (5, 2)
    det_score: float
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (D,) L2-normalised
    crop: np.ndarray | None = None  # (112, 112, 3) aligned BGR crop, shared with the heads
    attributes: dict[str, Any] = field(default_factory=dict)  # the heads' answers, e.g. {"emotion": {...}}


class FaceHead(Protocol):
    """A classifier run on the faces of an engine call (app.heads.Head). The engine runs the heads it is given
    inside its inference gate, without knowing what they are: so the engine never imports app.heads."""

    @property
    def name(self) -> str: ...

    def run(self, images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> None:
        """Add this head's answer to `Face.attributes` of every face; `faces[i]` are found in `images[i]`."""
        ...
