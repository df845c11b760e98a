"""embed=False: the engine detects, aligns and runs heads, and skips the recognizer (real models, real photos)."""

from __future__ import annotations

import numpy as np

from app.engine import FaceEngine, InferenceBatcher, InferenceGate
from app.heads import HeadRegistry
from tests.support import Photos, read_bgr


def test_without_embeddings_the_same_faces_and_head_answers(engine: FaceEngine, heads: HeadRegistry) -> None:
    image = read_bgr(Photos.t1)
    emotion = heads.select("emotion")
    calls: list[int] = []
    original = engine.recognizer.embed
    engine.recognizer.embed = lambda crops: calls.append(len(crops)) or original(crops)  # type: ignore[method-assign]
    try:
        full = engine.analyze_batch([image], heads=emotion)[0]
        assert calls == [6]
        light = engine.analyze_batch([image], heads=emotion, embed=False)[0]
        assert calls == [6], "the recognizer ran although no embedding was asked for"
    finally:
        del engine.recognizer.embed  # type: ignore[method-assign]
    assert len(light) == len(full) == 6
    for a, b in zip(full, light, strict=True):
        np.testing.assert_allclose(a.bbox, b.bbox)
        assert a.embedding.shape == (engine.dim,) and b.embedding.size == 0
        assert b.crop is not None and a.attributes == b.attributes


def test_batcher_passes_embed_through(engine: FaceEngine) -> None:
    own = FaceEngine.__new__(FaceEngine)
    own.__dict__.update(engine.__dict__)
    own.gate = InferenceGate(1, 5.0)
    batcher = InferenceBatcher(own, max_images=8)
    try:
        image = read_bgr(Photos.yaoming)
        ((face,),) = batcher.analyze([image], embed=False)
        assert face.embedding.size == 0
        ((face,),) = batcher.analyze([image])
        assert face.embedding.shape == (engine.dim,)
    finally:
        batcher.close()
