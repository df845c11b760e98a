"""SCRFD face detector with 5 keypoints, batched when the model allows it."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.engine.graph import IMAGE_INPUT
from app.engine.model import OnnxModel
from app.engine.runtime import Runtime
from app.engine.scrfd import Detections, decode_batch, letterbox_batch, letterbox_images, letterbox_input
from app.errors import ModelPackError

# The canvases a single image is letterboxed onto on the CPU: the smallest of them that holds the scaled image. A
# few aspect ratios (square, 4:3, 3:2, 16:9, each way) fitted in DET_SIZE: a bounded set of input shapes, all
# warmed at start-up, that wastes little detector work on padding (the common photo shapes fit one closely). On a
# GPU, and for any batch of more than one image, the one canvas is DET_SIZE itself.
CANVAS_ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16))


# Threads that place a batch's images on its canvases (app.engine.scrfd: copies and OpenCV calls that release the
# GIL). In the request batcher's one dispatcher thread the letterbox was a third of its CPU time on a GPU's layout:
# serial work that bounds a GPU machine's searches/s (ingest's inference threads: a fifth). Half the cores, so that
# they do not take the cores the HTTP workers and decoders need; none below 4 cores, where the machine is full
# anyway and the hand-off only adds CPU (2 cores, gpu layout, 2 threads: the dispatcher thread 0.85 -> 0.62 ms per
# search, the core's CPU 1.77 -> 1.86 ms and 0.97x the searches/s; docs/PERFORMANCE.md).
PLACING_THREADS = min(8, (os.cpu_count() or 1) // 2)


@functools.cache
def placing_pool() -> ThreadPoolExecutor | None:
    """The process's letterbox threads (None below 4 cores: PLACING_THREADS under 2), made at first use and shared
    by every detector."""
    return ThreadPoolExecutor(PLACING_THREADS, thread_name_prefix="letterbox") if PLACING_THREADS > 1 else None


def _up32(value: float) -> int:
    return -(-round(value) // 32) * 32


def aspect_canvases(det_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(width, height) of each CANVAS_ASPECTS canvas fitted in det_size, smallest area first."""
    width, height = det_size
    canvases = set()
    for aspect_w, aspect_h in CANVAS_ASPECTS:
        scale = min(width / aspect_w, height / aspect_h)
        canvases.add((min(width, _up32(aspect_w * scale)), min(height, _up32(aspect_h * scale))))
    return sorted(canvases, key=lambda c: (c[0] * c[1], c))


class ScrfdDetector(OnnxModel):
    """SCRFD with 5 keypoints; runs a whole chunk of images in one call when the model's batch axis allows it."""

    REWRITE_BATCH_AXIS = False  # SCRFD's outputs are per-anchor arrays: _batch_axis_usable reads them
    IMAGE_NORMALISATION = (127.5, 128.0)  # (pixel - 127.5) / 128, RGB

    def __init__(
        self,
        path: Path,
        *,
        runtime: Runtime,
        det_size: tuple[int, int],
        threshold: float,
        batch_sizes: Sequence[int] = (),
        canvases: Sequence[tuple[int, int]] | None = None,
        max_faces: int = 0,
    ) -> None:
        """`batch_sizes`: empty for 1 on the CPU, 16 on a GPU. `canvases`: (width, height) of the canvases one
        image may be letterboxed onto, each within det_size; None: det_size alone on a GPU (every new input shape
        costs a kernel search there), aspect_canvases(det_size) on the CPU."""
        self.det_size = det_size
        super().__init__(path, name=path.name, runtime=runtime, batch_sizes=batch_sizes)
        if len(self.output_names) != 9:
            raise ModelPackError(
                f"detector has {len(self.output_names)} outputs; a SCRFD model with keypoints (9 outputs) is required"
            )
        self.threshold = threshold
        self.max_faces = max_faces  # 0: no cap
        if canvases is None:
            # On the CPU also the same aspects at half the size: an image reduced on purpose (PREDICT_MAX_SIDE:
            # /ws predict at 320 px) is not scaled back up, and a 320 px canvas costs a quarter of a 640 one.
            half = (det_size[0] // 2, det_size[1] // 2)
            canvases = [det_size] if self.on_gpu else [*aspect_canvases(det_size), *aspect_canvases(half)]
        if any(w > det_size[0] or h > det_size[1] or w % 32 or h % 32 for w, h in canvases):
            raise ValueError(f"detector canvases {canvases} must be multiples of 32 within DET_SIZE {det_size}")
        # The full canvas is always there: it holds any scaled image.
        self.canvases = sorted({*canvases, det_size}, key=lambda c: (c[0] * c[1], c))

    def default_batch_sizes(self, on_gpu: bool) -> tuple[int, ...]:
        return (16,) if on_gpu else (1,)  # batching helps on a GPU only; one size there (OnnxModel's note)

    def _gpu_item_shape(self) -> tuple[int, ...] | None:
        width, height = self.det_size  # the one canvas on a GPU
        return (height, width, 3) if self.image_input else (3, height, width)

    def _batch_axis_usable(self, session: ort.InferenceSession) -> bool:
        batch_dim = session.get_inputs()[0].shape[0]
        return len(session.get_outputs()[0].shape) == 3 and not (isinstance(batch_dim, int) and batch_dim == 1)

    def input_shapes(self) -> Sequence[tuple[int, ...]]:
        """Batch 1 on each canvas; larger batches on the full canvas (a batch is stacked on one canvas)."""
        width, height = self.det_size

        def shape(size: int, w: int, h: int) -> tuple[int, ...]:
            return (size, h, w, 3) if self.image_input else (size, 3, h, w)

        shapes = [shape(1, w, h) for w, h in self.canvases] if 1 in self.batch_sizes else []
        return shapes + [shape(size, width, height) for size in self.batch_sizes if size > 1]

    def detect(
        self, images: Sequence[np.ndarray], upscale: Sequence[float] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: boxes (N, 4), scores (N,), keypoints (N, 5, 2) in the image's pixels. A batch is stacked on the
        full canvas; a single image gets the smallest of the canvases that holds it, so most of the strip a
        landscape photo leaves free is not spent on padding (faces cut by the image's edge may come out slightly
        differently). `upscale`: per image, the most it may be scaled up (None: app.engine.scrfd.MAX_UPSCALE
        each). The input is uint8 pixels for a graph that takes images (app.engine.graph), else the normalised
        float tensor (app.engine.scrfd), written into a reused buffer (app.engine.buffers)."""
        pixels = self.input_name == IMAGE_INPUT
        build = letterbox_images if pixels else letterbox_batch
        results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for chunk in self.chunks(len(images)):
            part, fixed, rows = images[chunk.start : chunk.stop], chunk.size > 1, chunk.size
            limits = None if upscale is None else upscale[chunk.start : chunk.stop]
            shape = letterbox_input(
                part, self.det_size, fixed=fixed, rows=rows, canvases=self.canvases, upscale=limits, pixels=pixels
            )
            with self.buffers.take(*shape) as buffer:
                batch, scales = build(
                    part,
                    self.det_size,
                    fixed=fixed,
                    rows=rows,
                    canvases=self.canvases,
                    upscale=limits,
                    out=buffer,
                    pool=placing_pool(),
                )
                outs = self.run_blob(batch, rows)
            canvas = batch.shape[1:3] if pixels else batch.shape[2:]
            results.extend((d.boxes, d.scores, d.kps) for d in self._decode(outs, scales, canvas))
        return results

    def _decode(self, outs: Sequence[np.ndarray], scales: np.ndarray, canvas: tuple[int, ...]) -> list[Detections]:
        """The faces of every image of the chunk (app.engine.scrfd.decode_batch); padding rows are ignored."""
        height, width = canvas
        return decode_batch(outs, scales, (height, width), threshold=self.threshold, max_faces=self.max_faces)
