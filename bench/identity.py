"""Identity accuracy on the labelled eval set, through the real service (HTTP app, Qdrant Edge with int8
quantization and HNSW) and through plain insightface with exact numpy search, in the same run.

Protocol: for each identity with at least two photos, hold out one photo (rotating through every photo: each
photo is held out once), index all the others, and search with the held-out one; top-1 is right when the best
match belongs to the same identity. The service runs with synthetic distractor points so the collection is large
enough for HNSW and int8 segments to be built and used (they are skipped below ~5k points).

    python -m bench.identity [--distractors 20000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from app.store import FacePoint
from bench.common import eval_labels, insightface_baseline, setup_logging

logger = logging.getLogger("bench.identity")


def largest(faces: list[dict]) -> dict | None:
    return max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]), default=None)


def folds(labels: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Every photo of an identity with >= 2 photos is a held-out query once."""
    by_id: dict[str, list[Path]] = defaultdict(list)
    for path, identity in labels:
        by_id[identity].append(path)
    return [(p, i) for p, i in labels if len(by_id[i]) >= 2]


def run_service(labels: list[tuple[Path, str]], distractors: int) -> tuple[int, int, int, float]:
    """Index every photo once with its identity as subject; a query excludes its own photo's faces from the
    answer by asking for a few extra matches (equivalent to indexing all but the held-out photo)."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        settings = Settings(
            state_dir=state, qdrant_path=state / "qdrant", thumbs_dir=state / "thumbs", index_threshold=0
        )
        # A loopback peer, as a client on the service's machine: it may index while no API key exists.
        with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
            service = client.app.state.service  # type: ignore[attr-defined]
            rng = np.random.default_rng(0)
            for start in range(0, distractors, 5000):
                n = min(5000, distractors - start)
                vec = rng.standard_normal((n, service.engine.dim)).astype(np.float32)
                vec /= np.linalg.norm(vec, axis=1, keepdims=True)
                service.store.upsert(
                    [
                        FacePoint(
                            id=str(uuid.uuid4()), vector=v, payload={"file": f"distractor{start + j}", "face_index": 0}
                        )
                        for j, v in enumerate(vec)
                    ]
                )
            for path, identity in labels:
                r = client.post(
                    "/api/faces",
                    files={"file": (path.name, path.read_bytes())},
                    data={"subject": identity, "source": path.name},
                )
                assert r.status_code == 201, r.text
            started = time.perf_counter()
            service.store.optimize()
            build_s = time.perf_counter() - started
            info = client.get("/status").json()
            logger.warning(
                "service collection: %d points, %d in HNSW/int8 segments (index built in %.1fs)",
                info["vectors"],
                info["indexed_vectors"],
                build_s,
            )
            right = wrong = noface = 0
            for path, identity in folds(labels):
                r = client.post("/api/search", files={"file": (path.name, path.read_bytes())}, params={"top_k": 20})
                face = largest(r.json()["faces"])
                if face is None:
                    noface += 1
                    continue
                others = [m for m in face["matches"] if m["file"] != path.name]
                if others and others[0]["subject"] == identity:
                    right += 1
                else:
                    wrong += 1
                    logger.warning(
                        "  service miss: %s (%s) -> %s", path.name, identity, others[0]["subject"] if others else None
                    )
            return right, wrong, noface, build_s


def run_baseline(labels: list[tuple[Path, str]]) -> tuple[int, int, int]:
    analysis = insightface_baseline()
    embeddings: list[np.ndarray] = []
    owners: list[tuple[str, str]] = []  # (file, identity) per stored face
    largest_of: dict[str, np.ndarray] = {}
    for path, identity in labels:
        faces = analysis.get(cv2.imread(str(path)))
        for f in faces:
            embeddings.append(f.normed_embedding)
            owners.append((path.name, identity))
        if faces:
            big = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
            largest_of[path.name] = big.normed_embedding
    matrix = np.stack(embeddings)
    right = wrong = noface = 0
    for path, identity in folds(labels):
        if path.name not in largest_of:
            noface += 1
            continue
        scores = matrix @ largest_of[path.name]
        for idx in np.argsort(-scores):
            if owners[idx][0] != path.name:
                right += owners[idx][1] == identity
                wrong += owners[idx][1] != identity
                break
    return right, wrong, noface


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distractors", type=int, default=20000, help="synthetic points added (default 20000)")
    args = parser.parse_args()
    setup_logging()
    labels = eval_labels()
    queries = len(folds(labels))
    s_right, s_wrong, s_noface, _ = run_service(labels, args.distractors)
    b_right, b_wrong, b_noface = run_baseline(labels)
    print(f"eval set: {len(labels)} photos, {len({i for _, i in labels})} identities, {queries} held-out queries")
    print(
        f"oceano service (Edge, int8+HNSW, {args.distractors} distractors): top-1 {s_right}/{queries} "
        f"= {s_right / queries:.3f}  (wrong {s_wrong}, no face {s_noface})"
    )
    print(
        f"insightface FaceAnalysis + exact numpy:            top-1 {b_right}/{queries} "
        f"= {b_right / queries:.3f}  (wrong {b_wrong}, no face {b_noface})"
    )


if __name__ == "__main__":
    main()
