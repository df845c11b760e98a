"""The quality policy at indexing (QUALITY_MIN, QUALITY_POLICY): which faces are flagged or refused, and how a
face's quality reads in its point's payload. The engine measures (app.engine.quality); the service decides."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from app.config import QualityPolicy, Settings
from app.faces import Face, FaceQuality

# Payload keys of a face point (the store's float index is on QUALITY_KEY: searches' min_quality).
QUALITY_KEY = "quality"
DETAIL_KEY = "quality_detail"
FLAGGED_KEY = "quality_flagged"


def below_minimum(quality: FaceQuality | None, settings: Settings) -> bool:
    """Under QUALITY_MIN (never when it is 0, nor for a face without a quality record)."""
    return quality is not None and settings.quality_min > 0 and quality.score < settings.quality_min


def mark_flagged(faces: Iterable[Face], settings: Settings) -> None:
    """Set `quality.flagged` on every face under QUALITY_MIN: what answers show, whatever the policy."""
    for face in faces:
        if face.quality is not None:
            flagged = below_minimum(face.quality, settings)
            if flagged != face.quality.flagged:
                face.quality = dataclasses.replace(face.quality, flagged=flagged)


def refusal(quality: FaceQuality | None, settings: Settings) -> str | None:
    """Why indexing refuses this face (QUALITY_POLICY=refuse and under QUALITY_MIN), or None: it is indexed."""
    if settings.quality_policy is not QualityPolicy.REFUSE or not below_minimum(quality, settings):
        return None
    assert quality is not None
    return (
        f"quality {quality.score:.2f} is under QUALITY_MIN {settings.quality_min:.2f} (QUALITY_POLICY=refuse): "
        f"face {quality.size:.0f} px, sharpness {quality.sharpness:.0f}, yaw {quality.yaw:.0f}, pitch "
        f"{quality.pitch:.0f} degrees, detector score {quality.det_score:.2f}"
    )


def quality_payload(quality: FaceQuality | None, settings: Settings) -> dict[str, Any]:
    """The payload keys of a face's quality (none for a face without a record)."""
    if quality is None:
        return {}
    return {
        QUALITY_KEY: quality.score,
        DETAIL_KEY: {
            "size": quality.size,
            "sharpness": quality.sharpness,
            "pose": {"yaw": quality.yaw, "pitch": quality.pitch, "roll": quality.roll},
            "det_score": quality.det_score,
        },
        FLAGGED_KEY: settings.quality_policy is QualityPolicy.FLAG and below_minimum(quality, settings),
    }
