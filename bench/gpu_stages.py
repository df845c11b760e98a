"""bench.gpu's engine stages, in its own process: each face model and the whole engine call at each batch size,
the first call and warm ones, with the ONNX input shapes and run time seen through each model's session."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.faces import FaceHead
from bench.common import read_bgr
from bench.gpu_machine import GpuSampler, log

DEFAULT_BATCHES = (1, 4, 16, 64)


# ------------------------------------------------------------------------------------------------ stages
class TimedSession:
    """In front of a model's ONNX session: the input shape and seconds of every run."""

    def __init__(self, real: Any, name: str) -> None:
        self._real = real
        self.name = name
        self.runs: list[tuple[str, float]] = []

    def run(self, output_names: Any, input_feed: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = self._real.run(output_names, input_feed, *args, **kwargs)
        shape = "x".join(str(d) for d in next(iter(input_feed.values())).shape)
        self.runs.append((shape, time.perf_counter() - started))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def timed(model: Any, name: str) -> list[TimedSession]:
    """Put a TimedSession in front of the model's ONNX session (`session` or `_session`); none where the model
    keeps it otherwise (the rows then have no ONNX figures, the timings of the calls stay)."""
    for attribute in ("session", "_session"):
        real = getattr(model, attribute, None)
        if real is None or not callable(getattr(real, "run", None)):
            continue
        timer = real if isinstance(real, TimedSession) else TimedSession(real, name)
        try:
            setattr(model, attribute, timer)
        except AttributeError:
            return []
        return [timer]
    return []


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def configured_batches(engine: Any, settings: Any) -> list[int] | None:
    """The engine's fixed batch sizes, where this tree's engine has them (names it may use; else None)."""
    for owner, name in ((engine, "batch_sizes"), (settings, "batch_sizes"), (settings, "engine_batch_sizes")):
        value = getattr(owner, name, None)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        try:
            sizes = sorted({int(v) for v in value}) if value else []
        except (TypeError, ValueError):
            continue
        if sizes:
            return sizes
    return None


@dataclass
class Stage:
    name: str
    unit: str  # what one item of a batch is
    call: Callable[[int], object]
    timers: list[TimedSession]  # the ONNX sessions the call runs, where they could be watched


def measure(stage: Stage, batch: int, reps: int, budget: float) -> dict[str, Any]:
    """One row: the first call at this batch size, then warm calls; an engine whose parts this tree names
    otherwise gives a row with the error instead (the other rows still run)."""
    try:
        return measured(stage, batch, reps, budget)
    except Exception as exc:
        log(f"stages: {stage.name} at batch {batch} FAILED: {type(exc).__name__}: {exc}")
        return {"model": stage.name, "batch": batch, "unit": stage.unit, "error": f"{type(exc).__name__}: {exc}"}


def measured(stage: Stage, batch: int, reps: int, budget: float) -> dict[str, Any]:
    def runs() -> list[tuple[str, float]]:
        named = len(stage.timers) > 1  # the engine call: say which model each shape went to
        return [(f"{t.name} {shape}" if named else shape, s) for t in stage.timers for shape, s in t.runs]

    def clear() -> None:
        for timer in stage.timers:
            timer.runs.clear()

    clear()
    started = time.perf_counter()
    stage.call(batch)
    first = time.perf_counter() - started
    first_runs = runs()
    clear()
    warm: list[float] = []
    while len(warm) < max(1, reps) and (not warm or sum(warm) < budget):
        started = time.perf_counter()
        stage.call(batch)
        warm.append(time.perf_counter() - started)
    mean = float(np.mean(warm))
    onnx_warm = sum(s for _, s in runs()) / len(warm) if stage.timers else None
    return {
        "model": stage.name,
        "batch": batch,
        "unit": stage.unit,
        "first_ms": round(first * 1e3, 2),
        "warm_ms": round(mean * 1e3, 2),
        "warm_reps": len(warm),
        "warm_ms_per_item": round(mean * 1e3 / batch, 3),
        "items_per_s": round(batch / mean, 1),
        "onnx_warm_ms": round(onnx_warm * 1e3, 2) if onnx_warm is not None else None,
        "onnx_first_shapes": sorted({shape for shape, _ in first_runs}),
        "onnx_first_runs": len(first_runs),
    }


def run_stages(query: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    from app.bootstrap import load_models
    from app.config import Settings

    log("stages: loading the face models and heads as the service does")
    started = time.monotonic()
    with environment(env):
        settings = Settings()
        engine, heads = load_models(settings)
    result: dict[str, Any] = {"load_s": round(time.monotonic() - started, 2), "providers": engine.providers}
    warm_up = next((getattr(engine, n) for n in ("warm_up", "warmup") if callable(getattr(engine, n, None))), None)
    result["warmup_s"] = None
    if warm_up is not None:
        started = time.monotonic()
        warm_up()
        result["warmup_s"] = round(time.monotonic() - started, 2)
    configured = configured_batches(engine, settings)
    batches = args.batches or configured or list(DEFAULT_BATCHES)
    result["batches"] = batches
    result["batches_from"] = "--batches" if args.batches else ("engine" if configured else "default")
    image = read_bgr(query)
    default_heads = heads.select(None)
    result["heads"] = [h.name for h in default_heads]

    detector = Stage(
        "detector",
        "image",
        lambda n: engine.detector.detect([image] * n),
        timed(getattr(engine, "detector", None), "detector"),
    )
    result["rows"] = rows = []
    log(f"stages: {engine.providers[0]}, batch sizes {batches}")
    with GpuSampler([os.getpid()]) as sampler:
        for batch in batches:  # the detector first: its first calls are not yet warmed by anything else
            rows.append(measure(detector, batch, args.stage_reps, args.stage_seconds))
        log("stages: detector done")
        measure_models(engine, image, default_heads, detector, batches, args, rows)
    result["gpu"] = sampler.figures()
    return result


def measure_models(
    engine: Any,
    image: np.ndarray,
    default_heads: Sequence[FaceHead],
    detector: Stage,
    batches: list[int],
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
) -> None:
    """The recognizer, the default heads and the whole engine call, once the detector's rows are done."""
    try:  # one face of the query, found without running the recognizer (its first call is measured below)
        found = engine.analyze_batch([image], embed=False)[0]
    except TypeError:  # an engine without embed=
        found = engine.analyze_batch([image])[0]
    if not found:
        raise RuntimeError("no face in the query photo: the recognizer and heads need one")
    face = found[0]
    crop = face.crop
    if crop is None:
        raise RuntimeError("the engine gave a face without its aligned crop")
    recognizer_timers = timed(getattr(engine, "recognizer", None), "recognizer")
    stages = [Stage("recognizer", "face", lambda n: engine.recognizer.embed([crop] * n), recognizer_timers)]

    def head_call(head: FaceHead) -> Callable[[int], object]:
        return lambda n: head.run([image] * n, [[face] for _ in range(n)])

    stages += [Stage(f"head {h.name}", "face", head_call(h), timed(h, h.name)) for h in default_heads]
    every = [t for stage in [detector, *stages] for t in stage.timers]
    stages.append(
        Stage("engine call", "image", lambda n: engine.analyze_batch([image] * n, heads=default_heads), every)
    )
    for stage in stages:
        for batch in batches:
            rows.append(measure(stage, batch, args.stage_reps, args.stage_seconds))
        log(f"stages: {stage.name} done")
