"""Input arrays reused from one model run to the next, one small pool per input shape.

Why: a run at a fixed batch size needs a whole padded batch, and a fresh one per call cost more than the rest of
the request batcher's work together. On a GPU's layout the detector's 16 canvases are 19.7 MB (uint8 pixels) and
the recognizer's 64 rows 9.6 MB (float32): allocating and zeroing them per call (numpy's zeroed allocation, then
the page faults of writing into it) took 58 % of the batcher thread's CPU time, which bounds the searches/s of a
GPU machine (py-spy of the core, bench/overload's load; docs/PERFORMANCE.md). A buffer from the pool is already
mapped and mostly blank: a call writes its rows and blanks only the rows an earlier call wrote past them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

Shape = tuple[int, ...]
BufferKey = tuple[Shape, str, float]

# Buffers kept per shape: one per caller running the model at once (the inference gate bounds them: GPU_CONCURRENCY
# dispatcher threads, and ingest's calls through the same gate). A caller past them gets a new buffer, dropped after.
KEEP_PER_SHAPE = 4


class InputBuffer:
    """One reusable input array. Rows from `dirty` on hold `blank`; rows before it hold what an earlier call wrote.

    A caller writes its rows [0, n) whole (borders included), then `ready(n)` blanks the rows an earlier call wrote
    past them, so that every run sees the same padding a freshly blanked array would have."""

    __slots__ = ("array", "blank", "dirty")

    def __init__(self, shape: Shape, dtype: np.dtype[np.generic] | type, blank: float) -> None:
        self.array: np.ndarray = np.full(shape, blank, dtype=dtype)
        self.blank = blank
        self.dirty = 0

    def ready(self, rows: int) -> np.ndarray:
        """The array, once rows [0, rows) were written by the caller: later rows blanked where needed."""
        if self.dirty > rows:
            self.array[rows : self.dirty] = self.blank
        self.dirty = rows
        return self.array


class InputBuffers:
    """The pool of one model: `take` lends a buffer of a shape for the time of one run."""

    def __init__(self, keep: int = KEEP_PER_SHAPE) -> None:
        self.keep = keep
        self._free: dict[BufferKey, list[InputBuffer]] = {}
        self._lock = threading.Lock()
        self.created = 0  # buffers allocated so far (tests check they are reused)

    @contextmanager
    def take(self, shape: Shape, dtype: np.dtype[np.generic] | type, blank: float = 0.0) -> Iterator[InputBuffer]:
        key = (tuple(shape), np.dtype(dtype).str, float(blank))
        with self._lock:
            free = self._free.setdefault(key, [])
            buffer = free.pop() if free else None
            if buffer is None:
                self.created += 1
        if buffer is None:
            buffer = InputBuffer(shape, dtype, blank)
        yield buffer  # a call that raised may have written rows past `dirty`: its buffer is not kept
        with self._lock:
            if len(free) < self.keep:
                free.append(buffer)
