"""SCRFD face detector with 5 keypoints, batched when the model allows it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from app.engine.graph import IMAGE_INPUT
from app.engine.scrfd import Detections, decode_batch, letterbox_batch, letterbox_images
from app.errors import ModelPackError


class ScrfdDetector:
    """SCRFD with 5 keypoints; runs a whole batch in one call when the model's batch axis allows it."""

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        det_size: tuple[int, int],
        threshold: float,
        batch: int,
        fixed_canvas: bool = False,
        max_faces: int = 0,
    ) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        outputs = session.get_outputs()
        if len(outputs) != 9:
            raise ModelPackError(
                f"detector has {len(outputs)} outputs; a SCRFD model with keypoints (9 outputs) is required"
            )
        self.output_names = [o.name for o in outputs]
        batch_dim = session.get_inputs()[0].shape[0]
        self.batched = len(outputs[0].shape) == 3 and not (isinstance(batch_dim, int) and batch_dim == 1)
        self.batch = batch if self.batched else 1
        self.det_size = det_size
        self.threshold = threshold
        self.max_faces = max_faces  # 0: no cap
        # On a GPU every new input shape costs a kernel/algorithm search: keep one canvas size there.
        self.fixed_canvas = fixed_canvas

    def _letterbox(self, images: Sequence[np.ndarray], fixed: bool) -> tuple[np.ndarray, np.ndarray]:
        """The batch's input and each image's scale: uint8 pixels for a graph that takes images
        (app.engine.graph), else the normalised float tensor (app.engine.scrfd)."""
        if self.input_name == IMAGE_INPUT:
            return letterbox_images(images, self.det_size, fixed=fixed)
        return letterbox_batch(images, self.det_size, fixed=fixed)

    def detect(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: boxes (N, 4), scores (N,), keypoints (N, 5, 2) in the image's pixels."""
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            batch, scales = self._letterbox(chunk, self.fixed_canvas)
            outs = self.session.run(self.output_names, {self.input_name: batch})
            canvas = batch.shape[1:3] if batch.dtype == np.uint8 else batch.shape[2:]
            results.extend((d.boxes, d.scores, d.kps) for d in self._decode(outs, scales, canvas))
        return results

    def _decode(self, outs: Sequence[np.ndarray], scales: np.ndarray, canvas: tuple[int, ...]) -> list[Detections]:
        """The faces of every image of the batch (app.engine.scrfd.decode_batch)."""
        height, width = canvas
        return decode_batch(outs, scales, (height, width), threshold=self.threshold, max_faces=self.max_faces)
