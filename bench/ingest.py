"""Ingest throughput: app.ingest's pipeline against two plain loops, on the same folder, in one run.

    python -m bench.ingest [--copies 4] [--workers 32] [--batch 1024] [--rounds 2]

Folder: the eval photos (../shared/eval/faces-a, 63 photos) replicated `--copies` times under other names and
other bytes (bench/photos.py): 252 files by default. Both plain loops use insightface FaceAnalysis over the bundled
scrfd_500m + w600k_mbf (CPU, det_size 640) and write into a fresh Qdrant Edge shard built like EdgeStore:
- sequential loop: cv2.imread, `.get()`, one upsert per image; onnxruntime's default threads (all cores);
- threaded loop, as a competent user would write it: cv2.imread + `.get()` in a ThreadPoolExecutor with one worker
  per core, each worker with its own FaceAnalysis whose sessions get cores // workers intra-op threads (the split
  app.ingest makes on a CPU), and the points upserted `--batch` at a time by the main thread.
app.ingest: the in-process run of `python -m app.ingest` (IngestJob with the default options and the engine
settings the command picks) into another fresh STATE_DIR, thumbnails, resume state and flushes included.
Model loading is outside every timing. The three runs alternate for `--rounds` rounds, in the reverse order every
other round (app.ingest, sequential, threaded; then threaded, sequential, app.ingest; ...), so that other load on
the machine and the order hit all alike; the ratios are printed per round and over all rounds (figures summed).
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.bootstrap import open_services
from app.cli.ingest import tune_for_throughput
from app.config import Settings
from app.engine import FaceEngine, InferenceGate
from app.heads import HeadRegistry
from app.ingest.model import IngestOptions
from app.ingest.pipeline import IngestJob
from app.store import EdgeStore, FacePoint, spec_from_settings
from bench.common import insightface_baseline, setup_logging
from bench.photos import make_photo_folder

PLAIN_NAMESPACE = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    images: int
    faces: int


def plain_points(path: Path, faces: list[Any]) -> list[FacePoint]:
    return [
        FacePoint(
            id=str(uuid.uuid5(PLAIN_NAMESPACE, f"{path}:{i}")),
            vector=np.asarray(f.normed_embedding, dtype=np.float32),
            payload={
                "file": str(path),
                "face_index": i,
                "bbox": [float(v) for v in f.bbox],
                "det_score": float(f.det_score),
            },
        )
        for i, f in enumerate(faces)
    ]


def run_plain(files: list[Path], analysis: Any, store: EdgeStore) -> Run:
    """The sequential loop: one image at a time, one upsert per image."""
    started, cpu = time.perf_counter(), time.process_time()
    images = faces_total = 0
    for path in files:
        image = cv2.imread(str(path))
        if image is None:
            continue
        faces = analysis.get(image)
        store.upsert(plain_points(path, faces))
        images += 1
        faces_total += len(faces)
    store.flush()
    return Run(time.perf_counter() - started, time.process_time() - cpu, images, faces_total)


def run_threaded(files: list[Path], analyses: list[Any], store: EdgeStore, batch: int) -> Run:
    """The threaded loop: decode + FaceAnalysis.get on len(analyses) threads, each holding one FaceAnalysis
    while it runs (sessions are not shared); the main thread upserts the points `batch` at a time."""
    free: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for analysis in analyses:
        free.put(analysis)

    def work(path: Path) -> tuple[Path, list[Any] | None]:
        image = cv2.imread(str(path))
        if image is None:
            return path, None
        analysis = free.get()
        try:
            return path, analysis.get(image)
        finally:
            free.put(analysis)

    started, cpu = time.perf_counter(), time.process_time()
    images = faces_total = 0
    pending: list[FacePoint] = []
    with ThreadPoolExecutor(max_workers=len(analyses)) as pool:
        for path, faces in pool.map(work, files):
            if faces is None:
                continue
            pending.extend(plain_points(path, faces))
            images += 1
            faces_total += len(faces)
            if len(pending) >= batch:
                store.upsert(pending)
                pending = []
    store.upsert(pending)
    store.flush()
    return Run(time.perf_counter() - started, time.process_time() - cpu, images, faces_total)


def run_app_ingest(folder: Path, state_dir: Path, engine: FaceEngine, options: IngestOptions) -> Run:
    settings = Settings(state_dir=state_dir, qdrant_path=state_dir / "qdrant", thumbs_dir=state_dir / "thumbs")
    services = open_services(settings, models=(engine, HeadRegistry()), batcher=False, jobs=False)
    assert services.state is not None
    job = IngestJob(root=folder, options=options, service=services.service, state=services.state, settings=settings)
    started, cpu = time.perf_counter(), time.process_time()
    job.run()
    elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu
    counts = job.progress().counts
    services.close()
    return Run(elapsed, cpu_used, counts.done, counts.faces_added)


def report(name: str, run: Run) -> str:
    return (
        f"{name:11s} {run.images / run.seconds:6.2f} images/s {run.faces / run.seconds:6.2f} faces/s  "
        f"({run.images} images, {run.faces} faces in {run.seconds:.1f}s; {run.cpu_seconds / run.seconds:.2f} "
        f"cores busy)"
    )


def ratios(ingest: Run, plain: Run) -> str:
    images = (ingest.images / ingest.seconds) / (plain.images / plain.seconds)
    faces = (ingest.faces / ingest.seconds) / (plain.faces / plain.seconds) if plain.faces else float("nan")
    return f"{images:.2f}x images/s, {faces:.2f}x faces/s"


def total(runs: list[Run]) -> Run:
    return Run(
        sum(r.seconds for r in runs),
        sum(r.cpu_seconds for r in runs),
        sum(r.images for r in runs),
        sum(r.faces for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="versions of each eval photo (default 4: 252 files)")
    parser.add_argument("--workers", type=int, default=32, help="app.ingest --workers (default 32)")
    parser.add_argument(
        "--batch",
        type=int,
        default=1024,
        help="app.ingest --batch, and the threaded loop's points per upsert (default 1024)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the three (default 2)")
    args = parser.parse_args()
    setup_logging()

    with tempfile.TemporaryDirectory(prefix="oceano-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        files = make_photo_folder(tmp / "photos", copies=args.copies)
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        cores = os.cpu_count() or 1
        print(
            f"folder: {len(files)} files, {size_mb:.0f} MB; {cores} CPU cores "
            f"({platform.machine()}); load average before: {os.getloadavg()[0]:.2f}"
        )

        analysis = insightface_baseline()
        workers = cores  # threaded loop: one worker per core, the cores split evenly between their sessions
        threads = max(1, cores // workers)
        analyses = [insightface_baseline(intra_op_threads=threads) for _ in range(workers)]
        settings = tune_for_throughput(Settings())  # what `python -m app.ingest` runs with
        engine = FaceEngine.from_settings(
            settings, InferenceGate(settings.gpu_concurrency, settings.gpu_acquire_timeout)
        )
        print(
            f"app.ingest engine: ORT threads {settings.ort_threads or 'auto'}, {settings.gpu_concurrency} "
            f"inference workers; threaded loop: {len(analyses)} workers x {threads} ORT intra-op threads"
        )
        warm = cv2.imread(str(files[0]))
        assert warm is not None, files[0]
        analysis.get(warm)
        for a in analyses:
            a.get(warm)
        engine.analyze_batch([warm])
        spec = spec_from_settings(settings, dim=engine.dim, pack="plain-loop")
        options = IngestOptions(batch=args.batch, workers=args.workers)

        def plain_store(name: str) -> EdgeStore:
            return EdgeStore(tmp / name / "faces", spec, index_threshold=settings.index_threshold)

        def sequential(r: int) -> Run:
            store = plain_store(f"sequential{r}")
            try:
                return run_plain(files, analysis, store)
            finally:
                store.close()

        def threaded(r: int) -> Run:
            store = plain_store(f"threaded{r}")
            try:
                return run_threaded(files, analyses, store, args.batch)
            finally:
                store.close()

        def ingest(r: int) -> Run:
            return run_app_ingest(tmp / "photos", tmp / f"state{r}", engine, options)

        contenders: list[tuple[str, Callable[[int], Run]]] = [
            ("app.ingest", ingest),
            ("sequential", sequential),
            ("threaded", threaded),
        ]
        runs: dict[str, list[Run]] = {name: [] for name, _ in contenders}
        for r in range(args.rounds):
            for name, fn in contenders if r % 2 == 0 else contenders[::-1]:
                runs[name].append(fn(r))
                print(f"round {r + 1}: {report(name, runs[name][-1])}", flush=True)
            print(
                f"round {r + 1}: ratio app.ingest / sequential loop: "
                f"{ratios(runs['app.ingest'][-1], runs['sequential'][-1])}; app.ingest / threaded loop: "
                f"{ratios(runs['app.ingest'][-1], runs['threaded'][-1])}",
                flush=True,
            )

        ingest_all, sequential_all, threaded_all = (total(runs[name]) for name, _ in contenders)
        print(f"over {args.rounds} rounds:")
        print(f"  app.ingest (--workers {args.workers} --batch {args.batch}): {report('', ingest_all).strip()}")
        print(f"  sequential loop (FaceAnalysis.get, one upsert per image): {report('', sequential_all).strip()}")
        print(
            f"  threaded loop ({len(analyses)} threads x FaceAnalysis.get, {threads} ORT thread each, upserts of "
            f"{args.batch} points): {report('', threaded_all).strip()}"
        )
        print(f"  ratio app.ingest / sequential loop: {ratios(ingest_all, sequential_all)}")
        print(f"  ratio app.ingest / threaded loop:   {ratios(ingest_all, threaded_all)}")
        print(f"  (load average after: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
