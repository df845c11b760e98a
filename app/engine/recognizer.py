"""ArcFace recognizer: aligned 112x112 crops -> L2-normalised embeddings, in batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx

from app.engine.align import CROP_SIZE
from app.engine.model import Chunk, OnnxModel
from app.engine.runtime import Runtime
from app.errors import ModelPackError


def _normalisation(model: onnx.ModelProto) -> tuple[float, float]:
    """Exports with Sub/Mul among their first nodes normalise inside the graph (mean 0, std 1); the others expect
    (x - 127.5) / 127.5."""
    ops = {n.op_type for n in model.graph.node[:8]}
    return (0.0, 1.0) if {"Sub", "Mul"} <= ops else (127.5, 127.5)


class ArcFaceRecognizer(OnnxModel):
    def __init__(self, path: Path, *, runtime: Runtime, batch_sizes: Sequence[int]) -> None:
        # The graph is read once (glintr100 is 250 MB): for its normalisation and its declared batch axis.
        model = onnx.load(str(path), load_external_data=False)
        self.mean, self.std = _normalisation(model)
        super().__init__(model, path=path, name=path.name, runtime=runtime, batch_sizes=batch_sizes)
        inp = self.session.get_inputs()[0]
        if list(inp.shape[2:]) != [CROP_SIZE, CROP_SIZE]:
            raise ModelPackError(f"recognizer {path.name} takes {inp.shape}, expected N x 3 x 112 x 112")
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def input_shapes(self) -> Sequence[tuple[int, ...]]:
        return [(size, 3, CROP_SIZE, CROP_SIZE) for size in self.batch_sizes]

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)

        def blob(chunk: Chunk) -> np.ndarray:
            return cv2.dnn.blobFromImages(
                list(crops[chunk.start : chunk.stop]),
                1.0 / self.std,
                (CROP_SIZE, CROP_SIZE),
                (self.mean,) * 3,
                swapRB=True,
            )

        emb = np.concatenate([outputs[0] for _, outputs in self.run_chunks(len(crops), blob)]).astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)
