"""OnnxModel: the one base of every ONNX model of the process (SCRFD detector, ArcFace recognizer, classifier heads).

It owns what they had each repeated: the session on the runtime's providers, the batch axis, the fixed set of batch
sizes a model runs at (chunks of those sizes, the last one padded on a GPU), warm-up of every input shape before the
service is ready, and per-shape timing. Subclasses prepare their blobs and read their outputs.

Why a fixed set: onnxruntime's CUDA provider searches convolution algorithms (and TensorRT builds engines) for every
new input shape, seconds each on a GPU; the request batcher, ingest and the heads would otherwise make a new shape
on most calls (any number of images, any number of faces).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from app.engine.buffers import InputBuffers
from app.engine.graph import with_image_input
from app.engine.runtime import ReplaySession, Runtime, TensorrtProfile, create_session, dynamic_batch_model, uses_gpu

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows [start, stop) of a call, run at batch `size` (>= its rows: the rest is padding)."""

    start: int
    stop: int
    size: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


# Builds one chunk's input blob (rows chunk.start..chunk.stop; the model pads it to chunk.size).
BlobMaker = Callable[[Chunk], np.ndarray]


@dataclass(slots=True)
class ShapeTiming:
    """Seconds of the session runs at one input shape: the first one (a GPU pays its per-shape setup there) and the
    later ones."""

    first_s: float
    runs: int = 1
    total_s: float = 0.0  # all runs but the first

    @property
    def warm_s(self) -> float | None:
        return self.total_s / (self.runs - 1) if self.runs > 1 else None


def _fixed_dims(dims: Any) -> tuple[int, ...] | None:
    """One row's input shape when the graph fixes every axis of it (None when any is dynamic)."""
    if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


class OnnxModel:
    """One ONNX model in its session, run only at its batch sizes.

    `batch_sizes`: the sizes this model runs at; a model whose batch axis is fixed at 1 runs at 1 only. A call of
    n rows is cut into chunks (`chunks`): on a GPU, chunks of the largest size and a last one padded up to the
    next size (a GPU run costs about the same for any size up to the largest); on the CPU, where a run costs per
    row, n is decomposed into sizes of the set without padding when the set allows it. `input_shapes` lists every
    shape a run can have; `warm_up` runs each once."""

    # Some exports (ArcFace, Keras heads) declare their outputs with batch 1 although the input's batch axis is
    # dynamic: their declared outputs are rewritten at load (dynamic_batch_model). SCRFD's outputs are not per-row
    # arrays of that kind: the detector reads its batch axis itself.
    REWRITE_BATCH_AXIS = True
    # (mean, std) of a model that takes a normalised RGB blob: with Runtime.image_input it is given uint8 BGR
    # pixels (N x H x W x 3) instead, normalised inside its graph (app.engine.graph). None: never.
    IMAGE_NORMALISATION: tuple[float, float] | None = None

    def __init__(
        self,
        model: Path | onnx.ModelProto,
        *,
        name: str,
        runtime: Runtime,
        batch_sizes: Sequence[int],
        path: Path | None = None,
    ) -> None:
        """`model`: the file, or its graph already read (then `path`, when given, is its file: loaded as is when the
        graph needed no rewrite, which spares serialising a large model)."""
        path = model if isinstance(model, Path) else path
        self.model_file = name
        self.runtime = runtime
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
        batched, changed = dynamic_batch_model(proto) if self.REWRITE_BATCH_AXIS else (True, False)
        normalisation = self.IMAGE_NORMALISATION if runtime.image_input else None
        self.image_input = normalisation is not None
        if normalisation is not None:
            proto, changed = with_image_input(proto, mean=normalisation[0], std=normalisation[1]), True
        # Kept as plain numbers: a reference into the graph would keep the whole model (250 MB for glintr100) alive.
        first = proto.graph.input[0]
        self._item_shape = _fixed_dims(first.type.tensor_type.shape.dim[1:])
        profile = None
        if (item := self._gpu_item_shape()) is not None:
            sizes = batch_sizes or self.default_batch_sizes(True)  # a profile is TensorRT's: on a GPU
            ends = (min(sizes), max(sizes)) if batched else (1, 1)
            profile = TensorrtProfile(first.name, (ends[0], *item), (ends[1], *item))
        source = path if path is not None and not changed else proto.SerializeToString()
        session = create_session(source, runtime=runtime, name=name, profile=profile)
        inp = session.get_inputs()[0]
        self.input_name: str = inp.name
        self.output_names: list[str] = [o.name for o in session.get_outputs()]
        self.on_gpu = uses_gpu(session) or runtime.gpu_layout
        self.batched = batched and self._batch_axis_usable(session)
        chosen = tuple(sorted(set(batch_sizes))) or self.default_batch_sizes(self.on_gpu)
        self.batch_sizes: tuple[int, ...] = chosen if self.batched else (1,)
        self.pad = self.on_gpu
        # On a GPU each batch size runs in a session of its own: onnxruntime's CUDA provider paid a shape's
        # first-run cost (0.1-2.3 s on the H200) again each time a session's input shape changed, so a session
        # that alternated sizes paid it on most calls (run A, docs/PERFORMANCE.md). One shape per session lets a
        # model have small sizes for light load beside a large one. `session` runs the largest size (every size
        # but on a GPU with several).
        self.session: ort.InferenceSession = session
        self._smaller_sessions: dict[int, ort.InferenceSession] = {}
        if self.on_gpu and len(self.batch_sizes) > 1:
            for size in self.batch_sizes[:-1]:
                own = None
                if profile is not None:  # TensorRT's profile: this size alone
                    shape = (size, *profile.smallest[1:])
                    own = TensorrtProfile(profile.input_name, shape, shape)
                self._smaller_sessions[size] = create_session(
                    source, runtime=runtime, name=f"{name} [{size}]", profile=own
                )
        self.timings: dict[Shape, ShapeTiming] = {}
        self._timing_lock = threading.Lock()
        self.buffers = InputBuffers()  # padded batches, reused from run to run

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        """Every session of the model: one, or one per batch size on a GPU with several."""
        return [*self._smaller_sessions.values(), self.session]

    def session_for(self, size: int) -> ort.InferenceSession:
        return self._smaller_sessions.get(size, self.session)

    # ------------------------------------------------------------------------------------------- subclass hooks
    def default_batch_sizes(self, on_gpu: bool) -> tuple[int, ...]:
        """The sizes when none were given. A CPU run costs per row, so larger batches gain nothing there and only
        lengthen the warm-up. On a GPU one size: onnxruntime's CUDA provider (1.31, H200) paid its first-run cost,
        0.1-2 s, again each time a session's input shape changed, warm-up or not; with 1, 4, 16 and 64 the service
        answered 19 searches/s, with one size 250 (docs/PERFORMANCE.md). 64 rows cost 7 ms there, one row 1.2."""
        return (64,) if on_gpu else (1, 4, 16)

    def _gpu_item_shape(self) -> tuple[int, ...] | None:
        """One row's input shape on a GPU, for TensorRT's profile (None: no profile)."""
        return self._item_shape

    def _batch_axis_usable(self, session: ort.InferenceSession) -> bool:
        """Whether the session's outputs carry the batch axis (a subclass may know they do not)."""
        return True

    def input_shapes(self) -> Sequence[Shape]:
        """Every input shape a run of this model can have (warm_up runs each; tests check nothing else arrives)."""
        if self._item_shape is None:
            raise NotImplementedError(f"{type(self).__name__} has a dynamic input: it must list its input shapes")
        return [(size, *self._item_shape) for size in self.batch_sizes]

    # -------------------------------------------------------------------------------------------------- batches
    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def padded_size(self, rows: int) -> int:
        """The smallest batch size of the set that holds `rows` (at most the largest)."""
        if rows > self.max_batch:
            raise ValueError(f"{self.model_file}: {rows} rows exceed the largest batch size {self.max_batch}")
        return next(size for size in self.batch_sizes if size >= rows)

    def chunks(self, count: int) -> list[Chunk]:
        """How `count` rows are run: chunks of the set's sizes (see the class)."""
        chunks: list[Chunk] = []
        start = 0
        while start < count:
            left = count - start
            if left >= self.max_batch:
                size = self.max_batch
            elif self.pad:
                size = self.padded_size(left)
            else:  # the largest size that fits; padded only below the smallest size
                size = max((s for s in self.batch_sizes if s <= left), default=self.batch_sizes[0])
            rows = min(size, left)
            chunks.append(Chunk(start, start + rows, size))
            start += rows
        return chunks

    def run_blob(self, blob: np.ndarray, size: int | None = None) -> list[np.ndarray]:
        """One session run of `blob` (rows on axis 0), padded with zero rows up to `size` (default: the smallest
        batch size that holds it); the padding rows' outputs are dropped."""
        rows = len(blob)
        size = self.padded_size(rows) if size is None else size
        if size < rows or size not in self.batch_sizes:
            raise ValueError(f"{self.model_file}: {rows} rows cannot run at batch size {size} ({self.batch_sizes})")
        if size > rows:
            with self.buffers.take((size, *blob.shape[1:]), blob.dtype) as padded:
                padded.array[:rows] = blob
                outputs = self._timed_run(self.session_for(size), padded.ready(rows))
        else:
            outputs = self._timed_run(self.session_for(size), blob)
        return [o[:rows] for o in outputs] if self.batched and size > rows else list(outputs)

    def run_chunks(self, count: int, blob_of: BlobMaker) -> Iterator[tuple[Chunk, list[np.ndarray]]]:
        """Each chunk of `count` rows (see `chunks`): its blob from `blob_of(start, stop, size)`, run at its size."""
        for chunk in self.chunks(count):
            yield chunk, self.run_blob(blob_of(chunk), chunk.size)

    def _timed_run(self, session: ort.InferenceSession, blob: np.ndarray) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs: list[np.ndarray] = session.run(self.output_names, {self.input_name: blob})
        seconds = time.perf_counter() - started
        shape = tuple(blob.shape)
        with self._timing_lock:
            timing = self.timings.get(shape)
            if timing is None:
                self.timings[shape] = ShapeTiming(first_s=seconds)
            else:
                timing.runs += 1
                timing.total_s += seconds
        return outputs

    # -------------------------------------------------------------------------------------------------- warm-up
    def warm_up(self) -> dict[Shape, float]:
        """Runs every input shape once (zeros), so that no caller pays a shape's first run (on a GPU: the
        convolution search, TensorRT's engine build). Returns the seconds of each run. The stand-in's real session
        is warmed, so that the zeros' outputs are never replayed as answers."""
        seconds: dict[Shape, float] = {}
        for shape in self.input_shapes():
            session = self.session_for(shape[0])
            started = time.perf_counter()
            self._timed_run(session.real if isinstance(session, ReplaySession) else session, self._blank(shape))
            seconds[shape] = time.perf_counter() - started
        return seconds

    def time_run(self, shape: Shape) -> float:
        """Seconds of one run at `shape` (zeros): for benchmarks (bench/gpu.py: first call and warm)."""
        started = time.perf_counter()
        self._timed_run(self.session_for(shape[0]), self._blank(shape))
        return time.perf_counter() - started

    def _blank(self, shape: Shape) -> np.ndarray:
        return np.zeros(shape, np.uint8 if self.image_input else np.float32)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())


def log_warm_up(what: str, warmed: dict[str, dict[Shape, float]]) -> float:
    """Logs the warm-up of some models (each model's shapes and seconds); returns the total seconds."""
    total = sum(sum(shapes.values()) for shapes in warmed.values())
    detail = "; ".join(
        f"{name}: {len(shapes)} shapes {sum(shapes.values()):.2f}s (slowest {max(shapes.values(), default=0):.2f}s)"
        for name, shapes in warmed.items()
    )
    logger.info("warm-up of %s: %.2fs (%s)", what, total, detail)
    return total
