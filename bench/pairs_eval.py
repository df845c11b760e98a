"""Same-person decisions for every labelled pair of the eval set's pairs.csv, through HTTP, at the threshold in
force: accuracy, FAR and FRR for Oceano and for the plain insightface pipeline with the same threshold rule.

Oceano: the real service (`python -m app` in a subprocess, fresh state) indexes every photo of pairs.csv through
POST /api/faces; each photo is then searched through POST /api/search (top_k 100, threshold -1: every stored face
comes back with its score) and the pair's score is the cosine similarity between the largest face of one photo
and the stored largest face of the other (stored faces' boxes from GET /api/faces). The threshold is the one
/status says is in force. Plain insightface: FaceAnalysis over the same bundled model files, the largest face of
each photo, cosine similarity of its normed embeddings. Both decide "same person" when score >= threshold.

The photos are indexed with their labels.csv identity as `subject`, and the service's calibration on its enrolled
subjects (POST /api/calibrate/subjects, what `python -m app.calibrate --enrolled` runs) is printed at FAR 1e-2 and
1e-3, after the other faces of a photo with several (bystanders given the photo's subject) have it cleared.
Also printed: each pipeline's own threshold at FAR 1e-2 on these pairs (app.calibration.threshold_at_far), so the
rule "threshold at a FAR target" is compared too, not only one fixed number.

    python -m bench.pairs_eval [--eval-dir ../shared/eval/faces-a]
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.calibration import threshold_at_far
from bench.common import EVAL_DIR, eval_labels, insightface_baseline, read_bgr, setup_logging
from bench.live import live_server

MISSING = -1.0  # a pair whose face the search did not return (none expected: top_k covers the collection)


def read_pairs(eval_dir: Path) -> list[tuple[str, str, bool]]:
    with (eval_dir / "pairs.csv").open() as fh:
        return [(row["file1"], row["file2"], row["same"] == "1") for row in csv.DictReader(fh)]


def area(bbox: list[float]) -> float:
    return max(0.0, bbox[2] - bbox[0]) * max(0.0, bbox[3] - bbox[1])


def oceano_scores(eval_dir: Path, files: list[str], pairs: list[tuple[str, str, bool]]) -> tuple[np.ndarray, dict]:
    with (
        live_server(env={"LOG_LEVEL": "warning", **os.environ}) as server,
        httpx.Client(base_url=server.base_url, timeout=120) as http,
    ):
        identity = {path.name: who for path, who in eval_labels(eval_dir)}
        for name in files:
            data = {"subject": identity[name]} if name in identity else {}
            r = http.post("/api/faces", files={"file": (name, (eval_dir / name).read_bytes())}, data=data)
            r.raise_for_status()
        stored: dict[str, str] = {}  # file -> id of its largest stored face
        after = None
        best: dict[str, float] = {}
        every: list[str] = []
        while True:
            page = http.get("/api/faces", params={"limit": 1000, **({"after": after} if after else {})}).json()
            for face in page["faces"]:
                every.append(face["id"])
                if area(face["bbox"]) > best.get(face["file"], -1.0):
                    best[face["file"]], stored[face["file"]] = area(face["bbox"]), face["id"]
            after = page["next"]
            if after is None:
                break
        # A photo's subject goes to every face of it: the other faces of a photo (bystanders) lose it, as a user
        # would clear them, so that only the labelled person's face stands for the subject.
        for face_id in set(every) - set(stored.values()):
            http.post(f"/api/faces/{face_id}/subject", json={"subject": None}).raise_for_status()
        enrolled = {  # the same photos as subjects: `python -m app.calibrate --enrolled` runs this route
            far: http.post("/api/calibrate/subjects", params={"far": far}).json() for far in (1e-2, 1e-3)
        }
        total = {**http.get("/status").json(), "enrolled": enrolled}
        by_query: dict[str, dict[str, float]] = {}  # file -> {stored face id: score}
        for name in sorted({a for a, _, _ in pairs}):
            r = http.post(
                "/api/search",
                params={"top_k": 100, "threshold": -1},
                files={"file": (name, (eval_dir / name).read_bytes())},
            )
            r.raise_for_status()
            faces = r.json()["faces"]
            if faces:
                face = max(faces, key=lambda f: area(f["bbox"]))
                by_query[name] = {m["id"]: m["score"] for m in face["matches"]}
    scores = np.array(
        [by_query.get(a, {}).get(stored.get(b, ""), MISSING) for a, b, _ in pairs],
        dtype=np.float64,
    )
    return scores, total


def insightface_scores(eval_dir: Path, pairs: list[tuple[str, str, bool]]) -> np.ndarray:
    analysis = insightface_baseline()
    embedding: dict[str, np.ndarray | None] = {}
    for name in sorted({f for a, b, _ in pairs for f in (a, b)}):
        faces = analysis.get(read_bgr(eval_dir / name))
        embedding[name] = max(faces, key=lambda f: area(list(f.bbox))).normed_embedding if faces else None
    out = []
    for a, b, _ in pairs:
        ea, eb = embedding[a], embedding[b]
        out.append(MISSING if ea is None or eb is None else float(np.dot(ea, eb)))
    return np.array(out, dtype=np.float64)


def decisions(scores: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, Any]:
    accept = scores >= threshold
    genuine, impostor = int(same.sum()), int((~same).sum())
    false_accepts = int((accept & ~same).sum())
    false_rejects = int((~accept & same).sum())
    return {
        "accuracy": float((accept == same).mean()),
        "far": false_accepts / max(1, impostor),
        "frr": false_rejects / max(1, genuine),
        "fa": false_accepts,
        "fr": false_rejects,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--far", type=float, default=1e-2, help="the FAR target of each pipeline's own threshold")
    args = parser.parse_args(argv)
    setup_logging()
    pairs = read_pairs(args.eval_dir)
    files = sorted({f for a, b, _ in pairs for f in (a, b)})
    same = np.array([s for _, _, s in pairs], dtype=bool)
    ours, status = oceano_scores(args.eval_dir, files, pairs)
    theirs = insightface_scores(args.eval_dir, pairs)
    threshold = float(status["threshold"])
    print(
        f"{len(pairs)} labelled pairs ({int(same.sum())} same person, {int((~same).sum())} different) over "
        f"{len(files)} photos of {args.eval_dir}; model {status['model']}"
    )
    print(
        f"missing scores (no face found): oceano {int((ours == MISSING).sum())}, insightface "
        f"{int((theirs == MISSING).sum())}"
    )
    print(f"\nat the threshold in force, {threshold:.4f} ({status['threshold_source']}), same person: score >= it")
    header = f"{'pipeline':<22}{'threshold':>10}{'accuracy':>10}{'FAR':>9}{'FRR':>9}{'FA':>5}{'FR':>5}"
    print(header)
    for name, scores in (("oceano (HTTP)", ours), ("plain insightface", theirs)):
        d = decisions(scores, same, threshold)
        print(
            f"{name:<22}{threshold:>10.4f}{d['accuracy']:>10.4f}{d['far']:>9.4f}{d['frr']:>9.4f}{d['fa']:>5}{d['fr']:>5}"
        )
    print(f"\neach pipeline's own threshold at FAR {args.far:g} on these pairs")
    print(header)
    for name, scores in (("oceano (HTTP)", ours), ("plain insightface", theirs)):
        own = threshold_at_far(scores, same, args.far).threshold
        d = decisions(scores, same, own)
        print(f"{name:<22}{own:>10.4f}{d['accuracy']:>10.4f}{d['far']:>9.4f}{d['frr']:>9.4f}{d['fa']:>5}{d['fr']:>5}")
    for name, scores in (("oceano (HTTP)", ours), ("plain insightface", theirs)):
        print(
            f"{name}: lowest same-person score {float(scores[same].min()):.4f}, "
            f"highest different-person score {float(scores[~same].max()):.4f}"
        )
    for far, measured in status["enrolled"].items():
        print(
            f"calibrated on the photos as enrolled subjects (POST /api/calibrate/subjects, {measured['scored']} faces "
            f"of {measured['subjects']} subjects, {measured['genuine_pairs']} + {measured['impostor_pairs']} pairs): "
            f"EER {measured['eer']:.4f}, at FAR {far:g} threshold {measured['threshold']:.4f} "
            f"(FAR {measured['far']:.4f}, FRR {measured['frr']:.4f})"
        )
    print(f"largest score difference on a pair, oceano vs insightface: {float(np.abs(ours - theirs).max()):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
