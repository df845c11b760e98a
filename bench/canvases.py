"""What the CPU detector's canvas policy costs per search: one engine call (detect, align, embed) per photo of the
eval set, under three policies on the same engine and sessions, alternated photo by photo so that other load on
the machine hits all alike:

- any32: each photo on the smallest multiple-of-32 canvas that holds it (main before issue 15: any of 400 shapes);
- aspects: the smallest of 7 canvases (square, 4:3, 3:2, 16:9 each way, within DET_SIZE) that holds it (the CPU's
  default now: a bounded set, all warmed at start-up);
- fixed: DET_SIZE for every photo (what a GPU uses).

Printed per policy: CPU seconds of the process per search (onnxruntime's threads included: the cost), wall
milliseconds per search (median), the detector run alone (median), and the number of distinct canvases used.
Every policy is warmed on every canvas it uses first (no first-run cost counted).

    python -m bench.canvases [--rounds 3] [--photos DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from app.config import ProviderChoice, Settings
from app.engine import FaceEngine, InferenceGate
from app.engine.detector import aspect_canvases
from bench.common import EVAL_DIR, read_bgr, setup_logging

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def policies(det_size: tuple[int, int]) -> dict[str, list[tuple[int, int]]]:
    width, height = det_size
    every = [(w, h) for w in range(32, width + 1, 32) for h in range(32, height + 1, 32)]
    return {"any32": every, "aspects": aspect_canvases(det_size), "fixed": [det_size]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", type=Path, default=EVAL_DIR)
    args = parser.parse_args()
    setup_logging()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in SUFFIXES)
    images = [read_bgr(p) for p in photos]
    settings = Settings(providers=ProviderChoice.CPU)
    engine = FaceEngine.from_settings(settings, InferenceGate(1, 60.0))
    detector = engine.detector
    canvas_sets = {name: sorted(c, key=lambda c: (c[0] * c[1], c)) for name, c in policies(settings.det_size).items()}

    used: dict[str, int] = {}
    for name, canvases in canvas_sets.items():  # warm every canvas each policy uses on these photos
        detector.canvases = canvases
        detector.timings = {}
        for image in images:
            detector.detect([image])
        used[name] = len(detector.timings)

    cpu: dict[str, float] = dict.fromkeys(canvas_sets, 0.0)
    wall: dict[str, list[float]] = {name: [] for name in canvas_sets}
    detect: dict[str, list[float]] = {name: [] for name in canvas_sets}
    for _ in range(args.rounds):
        for image in images:
            for name, canvases in canvas_sets.items():
                detector.canvases = canvases
                started, started_cpu = time.perf_counter(), time.process_time()
                engine.analyze_batch([image])
                cpu[name] += time.process_time() - started_cpu
                wall[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                detector.detect([image])
                detect[name].append(time.perf_counter() - started)
    searches = args.rounds * len(images)
    print(
        f"{len(images)} photos of {args.photos}, {args.rounds} rounds, alternated; load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; onnxruntime threads: default"
    )
    print(f"{'policy':<8} {'canvases':>8} {'CPU ms/search':>13} {'wall ms p50':>11} {'detect ms p50':>13}")
    for name in canvas_sets:
        print(
            f"{name:<8} {used[name]:>8} "
            f"{cpu[name] / searches * 1e3:>13.1f} {np.median(wall[name]) * 1e3:>11.1f} "
            f"{np.median(detect[name]) * 1e3:>13.1f}"
        )


if __name__ == "__main__":
    main()
