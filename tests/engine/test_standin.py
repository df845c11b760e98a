"""The stand-in engine (ENGINE_STANDIN, for benchmarks): real outputs recorded once per input shape, then replayed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.bootstrap import load_models
from app.engine.runtime import REPLAY_MARKER, ReplaySession
from tests.support import make_settings, read_bgr


def test_standin_replays_the_first_outputs_of_each_shape(tmp_path: Path, photos) -> None:  # type: ignore[no-untyped-def]
    engine, heads = load_models(make_settings(tmp_path, engine_standin=True))
    detector, recognizer = engine.detector.session, engine.recognizer.session
    assert isinstance(detector, ReplaySession) and isinstance(recognizer, ReplaySession)
    assert REPLAY_MARKER not in detector.get_providers()
    assert all(isinstance(e.head.session, ReplaySession) for e in heads.listings() if e.head is not None)

    yao = read_bgr(photos.yaoming)
    first = engine.analyze_batch([yao])
    real_runs = detector.real_runs + recognizer.real_runs
    again = engine.analyze_batch([yao])
    assert detector.real_runs + recognizer.real_runs == real_runs  # nothing ran for real the second time
    assert detector.replayed_runs >= 1 and recognizer.replayed_runs >= 1
    assert np.array_equal(first[0][0].embedding, again[0][0].embedding)

    # Another picture of the same shape gets the recorded answer, not its own: a stand-in, never for real use.
    blank = np.zeros_like(yao)
    assert len(engine.analyze_batch([blank])[0]) == len(first[0])


def test_gpu_layout_standin_runs_as_on_a_gpu_and_every_row_of_a_batch_answers(tmp_path: Path, photos) -> None:  # type: ignore[no-untyped-def]
    """ENGINE_STANDIN_LAYOUT=gpu: the models take a GPU's layout on this CPU (one detector canvas, uint8 input,
    GPU batch sizes, padded chunks); a replayed batch answers the first row's outputs on every row, so that each
    image of a later batch finds the face the first did (recorded as they were, the padding rows of the first
    run, faceless, stood for every image but the first)."""
    settings = make_settings(tmp_path, engine_standin=True, engine_standin_layout="gpu")
    engine, _ = load_models(settings)
    assert engine.on_gpu and engine.runtime.gpu_layout and engine.detector.image_input
    assert engine.detector.batch_sizes == (16,) and engine.detector.canvases == [settings.det_size]
    assert engine.recognizer.batch_sizes == (64,)

    yao = read_bgr(photos.yaoming)
    first = engine.analyze_batch([yao])  # recorded: one image and 15 padding rows
    assert len(first[0]) == 1
    batch = engine.analyze_batch([yao] * 5)  # replayed
    assert [len(row) for row in batch] == [1] * 5
    for row in batch:
        assert np.array_equal(row[0].embedding, first[0][0].embedding)
        assert np.allclose(row[0].bbox, first[0][0].bbox)
