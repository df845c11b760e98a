"""Crowd level and density score of one frame, from its face count."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.config import Settings


class CrowdLevel(StrEnum):
    EMPTY = "empty"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    VERY_HIGH = "very_high"


@dataclass(frozen=True, slots=True)
class CrowdAnalysis:
    face_count: int
    crowd_level: CrowdLevel
    density_score: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "face_count": self.face_count,
            "crowd_level": self.crowd_level.value,
            "density_score": self.density_score,
        }


@dataclass(frozen=True, slots=True)
class CrowdScale:
    """`levels`: the highest face counts of low, medium and high (CROWD_LEVELS, default 2, 5, 10): 0 faces is
    empty, 1-2 low, 3-5 medium, 6-10 high, 11 and more very_high.

    density_score = min(1, face_count / capacity), rounded to 3 decimals: the share of the scene's capacity
    (CROWD_CAPACITY faces, default 20) in use. It depends on the count only, not on how large the faces look:
    a camera close to two people is not a crowd."""

    levels: tuple[int, int, int] = (2, 5, 10)
    capacity: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> CrowdScale:
        return cls(levels=settings.crowd_levels, capacity=settings.crowd_capacity)

    def level(self, face_count: int) -> CrowdLevel:
        if face_count <= 0:
            return CrowdLevel.EMPTY
        low, medium, high = self.levels
        if face_count <= low:
            return CrowdLevel.LOW
        if face_count <= medium:
            return CrowdLevel.MEDIUM
        if face_count <= high:
            return CrowdLevel.HIGH
        return CrowdLevel.VERY_HIGH

    def density(self, face_count: int) -> float:
        return round(min(1.0, max(0, face_count) / self.capacity), 3)

    def analyze(self, face_count: int) -> CrowdAnalysis:
        return CrowdAnalysis(
            face_count=face_count, crowd_level=self.level(face_count), density_score=self.density(face_count)
        )
