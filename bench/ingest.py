"""Ingest throughput: app.ingest's pipeline against a plain loop, on the same folder, in one run.

    python -m bench.ingest [--copies 4] [--workers 32] [--batch 1024] [--rounds 2]

Folder: the eval photos (../shared/eval/faces-a, 63 photos) replicated `--copies` times under other names and
other bytes (bench/photos.py): 252 files by default. Plain loop: insightface FaceAnalysis over the bundled
scrfd_500m + w600k_mbf (CPU, det_size 640): cv2.imread, `.get()`, then one upsert per image into a fresh Qdrant
Edge shard built like EdgeStore. app.ingest: the in-process run of `python -m app.ingest` (IngestJob with the
default options and the engine settings the command picks) into another fresh STATE_DIR, thumbnails, resume
state and flushes included. Model loading is
outside both timings. The two alternate for `--rounds` rounds so that other load on the machine hits both alike;
the figures are summed over the rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
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


def run_plain(files: list[Path], analysis: Any, store: EdgeStore) -> Run:
    started, cpu = time.perf_counter(), time.process_time()
    images = faces_total = 0
    for path in files:
        image = cv2.imread(str(path))
        if image is None:
            continue
        faces = analysis.get(image)
        store.upsert([FacePoint(id=str(uuid.uuid5(PLAIN_NAMESPACE, f"{path}:{i}")),
                                vector=np.asarray(f.normed_embedding, dtype=np.float32),
                                payload={"file": str(path), "face_index": i, "bbox": [float(v) for v in f.bbox],
                                         "det_score": float(f.det_score)})
                      for i, f in enumerate(faces)])
        images += 1
        faces_total += len(faces)
    store.flush()
    return Run(time.perf_counter() - started, time.process_time() - cpu, images, faces_total)


def run_app_ingest(folder: Path, state_dir: Path, engine: FaceEngine, options: IngestOptions) -> Run:
    settings = Settings(state_dir=state_dir, qdrant_path=state_dir / "qdrant", thumbs_dir=state_dir / "thumbs")
    services = open_services(settings, models=(engine, HeadRegistry()), batcher=False, jobs=False)
    assert services.state is not None
    job = IngestJob(root=folder, options=options, service=services.service, state=services.state,
                    settings=settings)
    started, cpu = time.perf_counter(), time.process_time()
    job.run()
    elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu
    counts = job.progress().counts
    services.close()
    return Run(elapsed, cpu_used, counts.done, counts.faces_added)


def report(name: str, run: Run) -> str:
    return (f"{name:11s} {run.images / run.seconds:6.2f} images/s {run.faces / run.seconds:6.2f} faces/s  "
            f"({run.images} images, {run.faces} faces in {run.seconds:.1f}s; {run.cpu_seconds / run.seconds:.2f} "
            f"cores busy)")


def total(runs: list[Run]) -> Run:
    return Run(sum(r.seconds for r in runs), sum(r.cpu_seconds for r in runs), sum(r.images for r in runs),
               sum(r.faces for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="versions of each eval photo (default 4: 252 files)")
    parser.add_argument("--workers", type=int, default=32, help="app.ingest --workers (default 32)")
    parser.add_argument("--batch", type=int, default=1024, help="app.ingest --batch (default 1024)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both (default 2)")
    args = parser.parse_args()
    setup_logging()

    with tempfile.TemporaryDirectory(prefix="oceano-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        files = make_photo_folder(tmp / "photos", copies=args.copies)
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"folder: {len(files)} files, {size_mb:.0f} MB; {os.cpu_count()} CPU cores "
              f"({platform.machine()}); load average before: {os.getloadavg()[0]:.2f}")

        analysis = insightface_baseline()
        settings = tune_for_throughput(Settings())  # what `python -m app.ingest` runs with
        engine = FaceEngine.from_settings(settings, InferenceGate(settings.gpu_concurrency,
                                                                  settings.gpu_acquire_timeout))
        print(f"app.ingest engine: ORT threads {settings.ort_threads or 'auto'}, {settings.gpu_concurrency} "
              f"inference workers")
        warm = cv2.imread(str(files[0]))
        analysis.get(warm)
        engine.analyze_batch([warm])
        spec = spec_from_settings(settings, dim=engine.dim, pack="plain-loop")
        options = IngestOptions(batch=args.batch, workers=args.workers)

        plain_runs: list[Run] = []
        ingest_runs: list[Run] = []
        for r in range(args.rounds):
            store = EdgeStore(tmp / f"plain{r}" / "faces", spec, index_threshold=settings.index_threshold)
            plain_runs.append(run_plain(files, analysis, store))
            store.close()
            print(f"round {r + 1}: {report('plain loop', plain_runs[-1])}", flush=True)
            ingest_runs.append(run_app_ingest(tmp / "photos", tmp / f"state{r}", engine, options))
            print(f"round {r + 1}: {report('app.ingest', ingest_runs[-1])}", flush=True)

        plain, ingest = total(plain_runs), total(ingest_runs)
        print(f"plain loop (FaceAnalysis.get + one upsert per image): {report('', plain).strip()}")
        print(f"app.ingest (--workers {args.workers} --batch {args.batch}): {report('', ingest).strip()}")
        ratio_images = (ingest.images / ingest.seconds) / (plain.images / plain.seconds)
        ratio_faces = (ingest.faces / ingest.seconds) / (plain.faces / plain.seconds)
        print(f"ratio app.ingest / plain loop: {ratio_images:.2f}x images/s, {ratio_faces:.2f}x faces/s "
              f"(load average after: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
