"""ArcFace recognizer: aligned 112x112 crops -> L2-normalised embeddings, in batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx

from app.engine.align import CROP_SIZE
from app.engine.runtime import create_session, dynamic_batch_model
from app.errors import ModelPackError


def _prepare_recognizer(path: Path) -> tuple[bytes | Path, bool, tuple[float, float]]:
    """Read the recognizer graph once (glintr100 is 250 MB) for two things:
    - some ArcFace exports declare their output as [1, D] although the batch axis is dynamic: the declared axis
      is rewritten at load so batched runs are legal (no shape warnings);
    - exports with Sub/Mul among their first nodes normalise inside the graph (mean 0, std 1); the others
      expect (x - 127.5) / 127.5.
    Returns (model to load, batched, (mean, std))."""
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node[:8]}
    normalisation = (0.0, 1.0) if {"Sub", "Mul"} <= ops else (127.5, 127.5)
    batched, changed = dynamic_batch_model(model)
    return (model.SerializeToString() if changed else path), batched, normalisation


class ArcFaceRecognizer:
    def __init__(self, path: Path, *, providers: list[str], threads: int, batch: int) -> None:
        source, batched, (self.mean, self.std) = _prepare_recognizer(path)
        self.session = create_session(source, providers=providers, threads=threads, name=path.name)
        inp = self.session.get_inputs()[0]
        if list(inp.shape[2:]) != [CROP_SIZE, CROP_SIZE]:
            raise ModelPackError(f"recognizer {path.name} takes {inp.shape}, expected N x 3 x 112 x 112")
        self.input_name = inp.name
        self.dim = int(self.session.get_outputs()[0].shape[1])
        self.batch = batch if batched else 1

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for start in range(0, len(crops), self.batch):
            blob = cv2.dnn.blobFromImages(
                list(crops[start : start + self.batch]),
                1.0 / self.std,
                (CROP_SIZE, CROP_SIZE),
                (self.mean,) * 3,
                swapRB=True,
            )
            out.append(self.session.run(None, {self.input_name: blob})[0])
        emb = np.concatenate(out).astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)
