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
