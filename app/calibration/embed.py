"""Embed labelled photos with the pack in use: the largest face of each photo stands for it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.calibration.pairs import LabelledFace
from app.config import Settings
from app.engine import FaceEngine
from app.errors import OceanoError
from app.imaging import DecodedImage, read_image_file

logger = logging.getLogger(__name__)

CHUNK = 8  # photos per engine call


@dataclass(slots=True)
class Embedded:
    files: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # file -> why it has no embedding

    def matrix(self) -> np.ndarray:
        return np.stack(self.vectors) if self.vectors else np.zeros((0, 0), np.float32)


def embed_labelled(
    engine: FaceEngine, folder: Path, labels: Sequence[LabelledFace], settings: Settings, *, progress: bool = True
) -> Embedded:
    out = Embedded()
    max_bytes = int(settings.max_upload_mb * 2**20)
    max_pixels = int(settings.max_megapixels * 1e6)
    with tqdm(total=len(labels), unit="photo", desc="embedding", disable=not progress) as bar:
        for start in range(0, len(labels), CHUNK):
            chunk: list[tuple[LabelledFace, DecodedImage]] = []
            for item in labels[start : start + CHUNK]:
                try:
                    chunk.append(
                        (item, read_image_file(folder / item.file, max_bytes=max_bytes, max_pixels=max_pixels))
                    )
                except OceanoError as exc:
                    out.failures[item.file] = str(exc)
            faces = engine.analyze_batch([image for _, image in chunk]) if chunk else []
            for (item, _), found in zip(chunk, faces, strict=True):
                if not found:
                    out.failures[item.file] = "no face found"
                    continue
                largest = max(found, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
                out.files.append(item.file)
                out.identities.append(item.identity)
                out.vectors.append(largest.embedding)
            bar.update(len(labels[start : start + CHUNK]))
    for file, why in out.failures.items():
        logger.warning("%s: left out of the pairs: %s", file, why)
    return out
