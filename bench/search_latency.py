"""p50/p95 latency of POST /api/search for a photo against 100k stored points, against a plain loop of insightface
FaceAnalysis + exact numpy search over the same 100k vectors, measured in the same run.

The service runs for real: `python -m app` in a subprocess (uvicorn, one worker) on a STATE_DIR whose Qdrant Edge
collection holds N synthetic unit vectors (HNSW + int8 built before timing); requests go over HTTP with httpx.
The baseline runs in this process: cv2.imdecode of the same bytes, FaceAnalysis.get (det_size 640), numpy top-k.
Both use onnxruntime's default threads. The two are interleaved (one service request, one baseline search, and
so on) so that other load on the machine hits both alike.

Default photo: img1.jpg of the eval set (1382x1868, 2.6 MP, one face): both sides shrink it to fit the 640
detector input, so they spend the same detector pixels. (A photo smaller than 640 is upscaled to the 640 canvas by
insightface and not by Oceano: it would favour Oceano.)

Both must find the same faces: the same number, each box matched to one of the other side's with IoU >= 0.8 (both
in the original photo's pixels). The check is printed; the exit status is 1 when they disagree.

    python -m bench.search_latency [--points 100000] [--requests 100] [--photo PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np

from app.config import Settings
from app.engine import resolve_pack
from app.store import EdgeStore, FacePoint, spec_from_settings
from bench.common import EVAL_DIR, REPO, insightface_baseline, percentile_ms, setup_logging
from bench.live import start_server, stop_server

DEFAULT_PHOTO = EVAL_DIR / "img1.jpg"
MIN_IOU = 0.8


def build_collection(settings: Settings, points: int) -> np.ndarray:
    pack = resolve_pack(settings)
    spec = spec_from_settings(settings, dim=512, pack=pack.fingerprint)
    store = EdgeStore(settings.qdrant_path / settings.collection_name, spec, index_threshold=0)
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((points, 512)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    started = time.perf_counter()
    for start in range(0, points, 5000):
        store.upsert(
            [
                FacePoint(
                    id=str(uuid.uuid4()), vector=v, payload={"file": f"synthetic/{start + j}.jpg", "face_index": 0}
                )
                for j, v in enumerate(matrix[start : start + 5000])
            ]
        )
    upsert_s = time.perf_counter() - started
    store.optimize()
    info = store.info()
    print(
        f"collection: {info.vectors} points ({info.indexed} indexed); upsert {upsert_s:.1f}s, "
        f"index build {time.perf_counter() - started - upsert_s:.1f}s"
    )
    store.close()
    return matrix


@contextmanager
def running_service(state: Path, port: int) -> Iterator[httpx.Client]:
    """`python -m app` in a subprocess on `state`, answering /health (bench.live); stopped on exit."""
    server = start_server(REPO, state, port)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            yield http
    finally:
        stop_server(server)


def search_service(http: httpx.Client, photo: bytes, top_k: int) -> tuple[float, float, np.ndarray]:
    """Seconds for one POST /api/search, the seconds the service reports (took_ms: its handler, from reading the
    parsed upload to the answer), and the boxes it found (original pixels)."""
    files = {"file": ("probe.jpg", photo, "image/jpeg")}
    started = time.perf_counter()
    r = http.post("/api/search", params={"top_k": top_k}, files=files)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise SystemExit(f"POST /api/search answered {r.status_code}: {r.text[:500]}")
    body = r.json()
    faces = body["faces"]
    boxes = np.asarray([f["bbox"] for f in faces], dtype=np.float64).reshape(-1, 4)
    return elapsed, float(body["took_ms"]) / 1e3, boxes


class Baseline:
    """What a user of insightface would write: decode, FaceAnalysis.get, exact top-k by a matrix product."""

    def __init__(self, matrix: np.ndarray, top_k: int) -> None:
        self.analysis = insightface_baseline()
        self.matrix = matrix
        self.top_k = top_k

    def search(self, photo: bytes) -> tuple[float, np.ndarray]:
        """Seconds for one search, and the boxes found (the decoded image is the original: original pixels)."""
        started = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(photo, dtype=np.uint8), cv2.IMREAD_COLOR)
        faces = self.analysis.get(image)
        for face in faces:
            scores = self.matrix @ face.normed_embedding
            top = np.argpartition(-scores, self.top_k)[: self.top_k]
            top[np.argsort(-scores[top])]
        elapsed = time.perf_counter() - started
        return elapsed, np.asarray([f.bbox for f in faces], dtype=np.float64).reshape(-1, 4)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (N, 4) with every box of b (M, 4), as (N, M)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def matched_ious(a: np.ndarray, b: np.ndarray) -> list[float] | None:
    """One-to-one matching, best IoU first: the IoU of each pair, or None when the counts differ."""
    if len(a) != len(b):
        return None
    overlaps = iou(a, b) if len(a) else np.zeros((0, 0))
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs: list[float] = []
    for flat in np.argsort(-overlaps, axis=None):
        i, j = divmod(int(flat), overlaps.shape[1])
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append(float(overlaps[i, j]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100, help="timed searches of each (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed searches of each first (default 5)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--port", type=int, default=9187)
    parser.add_argument(
        "--photo",
        type=Path,
        default=DEFAULT_PHOTO,
        help="a photo with faces (default: img1.jpg of the eval set, 1382x1868, one face)",
    )
    args = parser.parse_args()
    setup_logging()
    photo_path: Path = args.photo
    if not photo_path.is_file():
        sys.exit(f"photo not found: {photo_path} (set OCEANO_EVAL_DIR, or pass --photo)")
    photo = photo_path.read_bytes()
    decoded = cv2.imdecode(np.frombuffer(photo, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        sys.exit(f"cannot decode {photo_path}")
    height, width = decoded.shape[:2]
    fit = min(640 / width, 640 / height)
    print(
        f"photo: {photo_path.name} ({width}x{height}, {width * height / 1e6:.1f} MP); top_k {args.top_k}, "
        f"{args.points} points, {args.requests} timed searches of each, interleaved, after {args.warmup} untimed"
    )
    if fit < 1:
        print(f"detector input: both shrink the photo to {round(width * fit)}x{round(height * fit)} (det_size 640)")
    else:
        print(
            "WARNING: the photo is smaller than the 640 detector input: insightface upscales it to the 640 canvas "
            "and Oceano does not, so this is not a like-for-like comparison"
        )

    service: list[float] = []
    handler: list[float] = []
    baseline: list[float] = []
    pairs = disagree = 0
    counts: set[tuple[int, int]] = set()
    worst_iou = 1.0
    first_disagreement = ""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        settings = Settings(state_dir=state, qdrant_path=state / "qdrant", thumbs_dir=state / "thumbs")
        matrix = build_collection(settings, args.points)
        plain = Baseline(matrix, args.top_k)
        with running_service(state, args.port) as http:
            for i in range(args.warmup + args.requests):
                a_s, a_handler, a_boxes = search_service(http, photo, args.top_k)  # A
                b_s, b_boxes = plain.search(photo)  # B
                if i >= args.warmup:
                    service.append(a_s)
                    handler.append(a_handler)
                    baseline.append(b_s)
                pairs += 1
                counts.add((len(a_boxes), len(b_boxes)))
                ious = matched_ious(a_boxes, b_boxes)
                if ious is not None and ious:
                    worst_iou = min(worst_iou, *ious)
                if ious is None or not ious or min(ious) < MIN_IOU:
                    disagree += 1
                    first_disagreement = first_disagreement or (
                        f"oceano boxes {np.round(a_boxes, 1).tolist()}, insightface {np.round(b_boxes, 1).tolist()}"
                    )

    s50, s95 = percentile_ms(service, 50), percentile_ms(service, 95)
    b50, b95 = percentile_ms(baseline, 50), percentile_ms(baseline, 95)
    print(f"oceano POST /api/search (HTTP, Edge int8+HNSW):   p50 {s50:7.1f} ms  p95 {s95:7.1f} ms")
    print(f"insightface FaceAnalysis.get + numpy exact top-k: p50 {b50:7.1f} ms  p95 {b95:7.1f} ms")
    print(f"ratio baseline/oceano: p50 {b50 / s50:.2f}x  p95 {b95 / s95:.2f}x")
    print(
        f"(oceano's own took_ms, inside its handler, without HTTP and multipart parsing: "
        f"p50 {percentile_ms(handler, 50):.1f} ms  p95 {percentile_ms(handler, 95):.1f} ms)"
    )
    found = ", ".join(f"oceano {a} / insightface {b}" for a, b in sorted(counts))
    if disagree == 0:
        print(
            f"same faces: OK in all {pairs} pairs of searches (faces found: {found}; each box matched, "
            f"IoU >= {MIN_IOU}: lowest {worst_iou:.3f})"
        )
    else:
        print(
            f"same faces: FAIL in {disagree} of {pairs} pairs of searches (faces found: {found}; a face "
            f"count differs, none was found, or a box matched with IoU < {MIN_IOU}); first: {first_disagreement}"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
