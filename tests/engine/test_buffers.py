"""Input buffers reused from run to run (app.engine.buffers): a reused buffer gives each run exactly the input a
fresh array would, and the models keep one per shape instead of allocating a padded batch per call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.engine import FaceEngine, InferenceGate
from app.engine.buffers import InputBuffers
from app.engine.scrfd import letterbox_batch, letterbox_images, letterbox_input
from bench.reference_scrfd import DET_SIZE
from tests.engine.test_vectorised import photo_set
from tests.support import make_settings

Letterbox = Callable[..., tuple[np.ndarray, np.ndarray]]


@pytest.mark.parametrize(("build", "pixels"), [(letterbox_images, True), (letterbox_batch, False)])
def test_a_reused_canvas_equals_a_fresh_one_bit_for_bit(build: Letterbox, pixels: bool) -> None:
    """Calls of 6, then 2, then 1, then 6 images onto one buffer of 8 rows: each call's input equals a fresh
    array's, so an earlier, larger image never shows under a later one's border and the rows an earlier call
    filled are padding again (the 2-image call after the 6-image one left rows 2-5 to blank)."""
    images = photo_set()
    pool = InputBuffers()
    for count in (6, 2, 1, 6):
        chunk = images[:count] if count != 2 else images[4:6]  # a small photo after the large ones
        shape = letterbox_input(chunk, DET_SIZE, fixed=True, rows=8, pixels=pixels)
        with pool.take(*shape) as buffer:
            reused, scales = build(chunk, DET_SIZE, fixed=True, rows=8, out=buffer)
            fresh, fresh_scales = build(chunk, DET_SIZE, fixed=True, rows=8)
            assert reused is buffer.array and reused.shape == fresh.shape == shape[0]
            assert np.array_equal(reused, fresh) and np.array_equal(scales, fresh_scales)
    assert pool.created == 1


def test_a_buffer_of_another_shape_is_refused() -> None:
    images = photo_set()[:2]
    with InputBuffers().take((4, 640, 640, 3), np.uint8) as buffer, pytest.raises(ValueError, match="cannot take"):
        letterbox_images(images, DET_SIZE, fixed=True, rows=8, out=buffer)


def test_the_pool_keeps_a_few_buffers_per_shape_and_drops_one_whose_caller_raised() -> None:
    pool = InputBuffers(keep=2)
    with pool.take((2, 3), np.float32) as a, pool.take((2, 3), np.float32) as b, pool.take((2, 3), np.float32) as c:
        assert len({id(a), id(b), id(c)}) == 3
    assert pool.created == 3
    with pool.take((2, 3), np.float32) as again, pool.take((2, 3), np.float32) as other:
        assert {id(again), id(other)} < {id(a), id(b), id(c)}  # two of the three were kept, and are lent again
    assert pool.created == 3
    with pytest.raises(RuntimeError), pool.take((2, 3), np.float32) as broken:
        broken.array[:] = 7  # written past `dirty`, and never made ready
        raise RuntimeError("a run failed")
    with pool.take((2, 3), np.float32) as next_one, pool.take((2, 3), np.float32) as last:
        assert broken not in (next_one, last)
        assert not np.any(next_one.array) and not np.any(last.array)
    assert pool.created == 4


def test_padded_runs_reuse_their_buffers_and_answer_as_before(tmp_path: Path) -> None:
    """The real bundled models with the GPU's padded batch sizes (detector 4, recognizer 8) on the CPU: many calls
    of different sizes allocate one input per model and shape, and a call answers the faces it answers on a fresh
    engine (rows left from a larger call do not change a smaller one's answer)."""
    settings = make_settings(tmp_path, det_batch_sizes=(4,), rec_batch_sizes=(8,))
    engine = FaceEngine.from_settings(settings, InferenceGate(1, 5.0))
    fresh = FaceEngine.from_settings(settings, InferenceGate(1, 5.0))
    images = photo_set()
    assert engine.detector.chunks(3)[0].size == 4  # 3 images run padded to 4 rows
    for count in (4, 3, 6, 1, 3):
        engine.analyze_batch(images[:count])
    after_larger = engine.analyze_batch(images[3:6])
    expected = fresh.analyze_batch(images[3:6])
    assert [len(row) for row in after_larger] == [len(row) for row in expected] and sum(map(len, expected)) > 0
    for row, fresh_row in zip(after_larger, expected, strict=True):
        for face, fresh_face in zip(row, fresh_row, strict=True):
            assert np.allclose(face.bbox, fresh_face.bbox, atol=1e-3)
            assert np.allclose(face.embedding, fresh_face.embedding, atol=1e-5)
    # One canvas shape for the detector (4 rows on the fixed canvas; the warm-up runs its own zeros) and one
    # padded recognizer batch: each allocated once over the six calls.
    assert engine.detector.buffers.created == 1
    assert engine.recognizer.buffers.created == 1
