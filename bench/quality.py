"""Face quality (app.engine.quality) on the labelled eval set and degraded copies of each photo.

(a) Ordering. Each labelled photo and its copies (Gaussian blur, downscale, rotation, JPEG quality 10) go through
    the real decode and FaceEngine; the largest face of each is scored. Printed per degradation: the mean score,
    the fraction of photos whose original scores higher (and at least as high), the mean cosine similarity of the
    copy's embedding to the original's (what the degradation costs recognition), and the Spearman and Kendall
    rank agreement between score and strength within each kind. Blur strength is relative to the face (sigma in
    pixels of the 112 px crop), so a 4000 px photo and a 600 px one are blurred alike.
(b) The gate. Every labelled photo and two degraded copies of it (blur sigma 4 on the crop, downscale 1/8) are
    enrolled under their identity through FaceService.index, once with QUALITY_POLICY=flag (everything stored)
    and once with refuse at QUALITY_MIN; each original is then a query against the faces of the other photos
    (leave-one-photo-out, exact cosine search over what was stored): top-1 accuracy, TAR at FAR 1e-2 and 1e-3,
    and the faces refused. The same on the originals alone.
`--calibrate` prints the raw features (size, sharpness, pose, det score) per copy: the constants of
app.engine.quality were read from them.

    python -m bench.quality [--eval-dir ../shared/eval/faces-a] [--limit N] [--quality-min 0.3] [--calibrate]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import math
import pickle
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import stats

from app.bootstrap import open_services
from app.calibration import threshold_at_far
from app.config import QualityPolicy, Settings
from app.engine import FaceEngine, InferenceGate, quality
from app.faces import Face
from app.imaging import DecodedImage, decode_image
from app.service import ImageToIndex, content_hash
from app.store import FaceFilter
from bench.common import EVAL_DIR, eval_labels, setup_logging

MAX_BYTES = 64 << 20
MAX_PIXELS = 100_000_000
Degrade = Callable[[np.ndarray, float], np.ndarray]  # (BGR pixels, the face's side in pixels) -> pixels


def blur(sigma_on_crop: float) -> Degrade:
    def apply(img: np.ndarray, face_side: float) -> np.ndarray:
        sigma = sigma_on_crop * face_side / 112.0  # the same blur as sigma_on_crop on the aligned crop
        return cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma, 0.1))

    return apply


def downscale(factor: int) -> Degrade:
    def apply(img: np.ndarray, face_side: float) -> np.ndarray:
        h, w = img.shape[:2]
        return cv2.resize(img, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)

    return apply


def rotate(degrees: float) -> Degrade:
    def apply(img: np.ndarray, face_side: float) -> np.ndarray:
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        cos, sin = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)  # the whole photo stays in view
        m[0, 2] += nw / 2 - w / 2
        m[1, 2] += nh / 2 - h / 2
        return cv2.warpAffine(img, m, (nw, nh), borderValue=(0, 0, 0))

    return apply


def jpeg(quality: int) -> Degrade:
    def apply(img: np.ndarray, face_side: float) -> np.ndarray:
        ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert out is not None
        return out

    return apply


# (kind, strength, degrade); strength orders the copies of one kind from mild to strong.
DEGRADATIONS: list[tuple[str, float, Degrade]] = [
    ("blur", 1.0, blur(1.0)),
    ("blur", 2.0, blur(2.0)),
    ("blur", 4.0, blur(4.0)),
    ("downscale", 2, downscale(2)),
    ("downscale", 4, downscale(4)),
    ("downscale", 8, downscale(8)),
    ("rotate", 30, rotate(30)),
    ("rotate", 60, rotate(60)),
    ("jpeg", 10, jpeg(10)),
]
GATE_COPIES = [("blur", 4.0, blur(4.0)), ("downscale", 8, downscale(8))]


def encoded(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return bytes(data)


def decoded(data: bytes) -> DecodedImage:
    return decode_image(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)


def largest(faces: list[Face]) -> Face | None:
    return max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])), default=None)


@dataclass
class Scored:
    photo: str
    kind: str  # "original" or a degradation
    strength: float
    face: Face | None
    similarity: float  # cosine of its embedding with the original's largest face (1 for the original)


def score_copies(engine: FaceEngine, labels: list[tuple[Path, str]]) -> list[Scored]:
    out: list[Scored] = []
    for path, _ in labels:
        data = path.read_bytes()
        original = largest(engine.analyze_batch([decoded(data)])[0])
        out.append(Scored(path.name, "original", 0.0, original, 1.0))
        if original is None or original.quality is None:
            continue
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:  # WebP under a .jpg name: the service's decoder reads it
            pixels = decoded(data).pixels
        side = original.quality.size
        for kind, strength, degrade in DEGRADATIONS:
            face = largest(engine.analyze_batch([decoded(encoded(degrade(pixels, side)))])[0])
            sim = float(face.embedding @ original.embedding) if face is not None else math.nan
            out.append(Scored(path.name, kind, float(strength), face, sim))
    return out


def score_of(s: Scored) -> float:
    return s.face.quality.score if s.face is not None and s.face.quality is not None else 0.0  # no face: 0


def ordering_table(rows: list[Scored], gate: float) -> None:
    originals = {s.photo: score_of(s) for s in rows if s.kind == "original"}
    print(f"(a) ordering on {len(originals)} photos: largest face's score; a copy with no face found scores 0")
    print(
        f"{'copy':<16}{'faces':>7}{'mean score':>12}{'orig > copy':>13}{'orig >= copy':>14}{'sim to orig':>13}"
        f"{f'under {gate:g}':>12}"
    )
    base_scores = np.array(list(originals.values()))
    print(
        f"{'original':<16}{len(originals):>7}{base_scores.mean():>12.3f}{'':>13}{'':>14}{1.0:>13.3f}"
        f"{(base_scores < gate).mean():>12.2f}"
    )
    for kind, strength, _ in DEGRADATIONS:
        copies = [s for s in rows if s.kind == kind and s.strength == strength]
        scores = np.array([score_of(s) for s in copies])
        base = np.array([originals[s.photo] for s in copies])
        sims = np.array([s.similarity for s in copies if s.face is not None])
        found = sum(s.face is not None for s in copies)
        label = f"{kind} {strength:g}"
        print(
            f"{label:<16}{found:>4}/{len(copies):<2}{scores.mean():>12.3f}{(base > scores).mean():>13.2f}"
            f"{(base >= scores).mean():>14.2f}{np.nanmean(sims) if sims.size else math.nan:>13.3f}"
            f"{(scores < gate).mean():>12.2f}"
        )
    print("rank agreement of score with strength (the original as strength 0); expected negative: stronger, lower")
    print("  pooled: every (photo, copy) together; per photo: the mean of each photo's own Kendall tau")
    for kind in dict.fromkeys(k for k, _, _ in DEGRADATIONS):
        levels: list[float] = []
        values: list[float] = []
        taus: list[float] = []
        for photo in originals:
            mine = [s for s in rows if s.photo == photo and s.kind in ("original", kind)]
            x = [s.strength if s.kind == kind else 0.0 for s in mine]
            y = [score_of(s) for s in mine]
            levels += x
            values += y
            if len(set(y)) > 1:
                taus.append(float(stats.kendalltau(x, y).statistic))
            else:
                taus.append(0.0)  # every copy scored alike: no order either way
        rho = float(stats.spearmanr(levels, values).statistic)
        tau = float(stats.kendalltau(levels, values).statistic)
        print(f"  {kind:<10} pooled Spearman {rho:+.3f}  Kendall {tau:+.3f};  per photo Kendall {np.mean(taus):+.3f}")
    faces = [s for s in rows if s.face is not None and s.kind != "original"]
    rho = stats.spearmanr([score_of(s) for s in faces], [s.similarity for s in faces]).statistic
    print(f"score vs similarity of the copy to its original, every copy with a face: Spearman {rho:+.3f}")


def calibration_dump(rows: list[Scored]) -> None:
    print("raw features per copy (median over photos): size px, sharpness, |yaw|, |pitch|, roll, det, sim, score")
    groups: dict[str, list[Scored]] = defaultdict(list)
    for s in rows:
        if s.face is not None and s.face.quality is not None:
            groups[s.kind if s.kind == "original" else f"{s.kind} {s.strength:g}"].append(s)
    for name, members in groups.items():
        q = [m.face.quality for m in members if m.face is not None and m.face.quality is not None]
        cols = [
            np.median([x.size for x in q]),
            np.median([x.sharpness for x in q]),
            np.median([abs(x.yaw) for x in q]),
            np.median([abs(x.pitch) for x in q]),
            np.median([x.roll for x in q]),
            np.median([x.det_score for x in q]),
            np.median([m.similarity for m in members]),
            np.median([x.score for x in q]),
        ]
        print(f"  {name:<14}" + "".join(f"{c:>9.2f}" for c in cols))
    orig = [s.face.quality for s in rows if s.kind == "original" and s.face is not None and s.face.quality]
    print(
        "originals: sharpness p10/p25/p50 "
        + "/".join(f"{np.percentile([q.sharpness for q in orig], p):.0f}" for p in (10, 25, 50))
        + ", pitch p10/p50/p90 "
        + "/".join(f"{np.percentile([q.pitch for q in orig], p):.1f}" for p in (10, 50, 90))
        + ", yaw p10/p50/p90 "
        + "/".join(f"{np.percentile([q.yaw for q in orig], p):.1f}" for p in (10, 50, 90))
    )


def calibrate(rows: list[Scored]) -> None:
    """The constants of app.engine.quality from the copies: the frontal nose height that makes the originals'
    median pitch 0 (press photos, mostly frontal at eye level), then a grid over the ramps' ends that ranks every
    face (originals and copies) most like the similarity of its embedding to the original's (Spearman)."""
    faced = [s for s in rows if s.face is not None and s.face.quality is not None]
    q = [s.face.quality for s in faced if s.face is not None and s.face.quality is not None]
    size, sharp, yaw, roll, det = (
        np.array([getattr(x, k) for x in q]) for k in ("size", "sharpness", "yaw", "roll", "det_score")
    )
    depth = quality.NOSE_DEPTH_HEIGHT
    nose = quality.NOSE_HEIGHT_FRONTAL - depth * np.tan(np.radians([x.pitch for x in q]))  # back to nose heights
    frontal = float(np.median([n for n, s in zip(nose, faced, strict=True) if s.kind == "original"]))
    pitch = np.degrees(np.arctan((frontal - nose) / depth))
    print(f"calibration: frontal nose height {frontal:.3f} (in force {quality.NOSE_HEIGHT_FRONTAL:.3f})")
    sim = np.array([s.similarity for s in faced])
    current = quality.combined_score(size, sharp, yaw, pitch, roll, det)
    print(f"  score vs similarity, constants in force: Spearman {stats.spearmanr(current, sim).statistic:+.3f}")
    grid = {
        "size_lo": (8.0, 12.0, 16.0, 24.0),
        "size_hi": (48.0, 64.0, 80.0, 112.0, 160.0),
        "sharpness_lo": (5.0, 10.0, 15.0, 25.0),
        "sharpness_hi": (80.0, 150.0, 300.0, 600.0),
        "det_hi": (0.7, 0.75, 0.8),
        "roll_max": (90.0, 120.0, 180.0, 1e9),
    }
    results = []
    for values in itertools.product(*grid.values()):
        constants = dataclasses.replace(quality.SCORE, **dict(zip(grid, values, strict=True)))
        score = quality.combined_score(size, sharp, yaw, pitch, roll, det, constants)
        results.append((float(stats.spearmanr(score, sim).statistic), values))
    results.sort(reverse=True)
    print("  best of the grid (Spearman with similarity; " + ", ".join(grid) + "):")
    for rho, values in results[:5]:
        print(f"    {rho:+.3f}  {values}")


# ------------------------------------------------------------------------------------------------------ the gate
@dataclass
class GateResult:
    stored: int
    refused: int
    queries: int
    top1: dict[str, int]  # by gallery: "all" (every stored face, bystanders with the photo's subject), "main"
    tar: dict[str, dict[float, float]]


def run_gate(
    labels: list[tuple[Path, str]], *, copies: bool, policy: QualityPolicy, quality_min: float, tmp: Path
) -> GateResult:
    state = tmp / f"{policy.value}-{int(copies)}"
    settings = Settings(
        state_dir=state,
        qdrant_path=state / "qdrant",
        thumbs_dir=state / "thumbs",
        quality_policy=policy,
        quality_min=quality_min,
    )
    identity = {p.name: who for p, who in labels}
    main_face: dict[str, int] = {}  # file -> face index of its largest face found, stored or refused
    services = open_services(settings, batcher=False, jobs=False, keys=False, sweep=False)
    try:
        service = services.service
        refused = 0
        for path, who in labels:
            data = path.read_bytes()
            variants = [(path.name, data)]
            if copies:
                image = decoded(data)
                face = largest(service.engine.analyze_batch([image])[0])
                side = face.quality.size / image.scale if face and face.quality else 100.0
                variants += [(f"{path.name}#{k}{s:g}", encoded(d(image.pixels, side))) for k, s, d in GATE_COPIES]
            for name, blob in variants:
                item = ImageToIndex(image=decoded(blob), content_hash=content_hash(blob), file=name, subject=who)
                result = service.index([item])[0]
                refused += len(result.refused)
                if result.faces:
                    main_face[name] = max(
                        result.faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])
                    ).index
        stored, _ = service.store.scroll(FaceFilter(), offset=None, limit=100_000)
        vectors = service.store.vectors([m.id for m in stored])
        gallery = np.stack([vectors[m.id] for m in stored]) if stored else np.zeros((0, service.engine.dim))
        owner = np.array([str(m.payload["file"]).split("#")[0] for m in stored])
        who_of = np.array([m.payload.get("subject") for m in stored])
        main = np.array([main_face.get(str(m.payload["file"])) == m.payload["face_index"] for m in stored])
        by_id: dict[str, int] = defaultdict(int)
        for _, who in labels:
            by_id[who] += 1
        top1 = {"all": 0, "main": 0}
        pairs: dict[str, tuple[list[float], list[bool]]] = {"all": ([], []), "main": ([], [])}
        queries = 0
        for path, who in labels:
            if by_id[who] < 2:
                continue
            face = largest(service.engine.analyze_batch([decoded(path.read_bytes())])[0])
            queries += 1
            if face is None:
                continue
            for name, keep in (("all", owner != path.name), ("main", (owner != path.name) & main)):
                if not keep.any():
                    continue
                sims = gallery[keep] @ face.embedding
                names = who_of[keep]
                top1[name] += names[int(np.argmax(sims))] == identity[path.name]
                pairs[name][0].extend(sims.tolist())
                pairs[name][1].extend((names == who).tolist())
    finally:
        services.close()
    tar = {}
    for name, (scores, same) in pairs.items():
        tar[name] = {far: 1.0 - threshold_at_far(np.array(scores), np.array(same), far).frr for far in (1e-2, 1e-3)}
    return GateResult(len(stored), refused, queries, top1, tar)


def gate_table(labels: list[tuple[Path, str]], quality_min: float) -> None:
    print(f"(b) identity with and without the gate (QUALITY_MIN {quality_min}), leave-one-photo-out, exact search")
    print("  all: every stored face, bystanders carrying the photo's subject (as an upload with subject= does);")
    print("  main: only the largest face of each photo or copy (bystanders cleared, as bench/pairs_eval does)")
    print(
        f"{'gallery':<32}{'policy':<8}{'stored':>7}{'refused':>8}{'top-1 all':>11}{'main':>7}"
        f"{'TAR@1e-2 all':>14}{'main':>7}{'TAR@1e-3 all':>14}{'main':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for copies in (False, True):
            for policy in (QualityPolicy.FLAG, QualityPolicy.REFUSE):
                r = run_gate(labels, copies=copies, policy=policy, quality_min=quality_min, tmp=Path(tmp))
                gallery = "originals + blur 4 + down 1/8" if copies else "originals"
                print(
                    f"{gallery:<32}{policy.value:<8}{r.stored:>7}{r.refused:>8}"
                    f"{r.top1['all'] / r.queries:>11.3f}{r.top1['main'] / r.queries:>7.3f}"
                    f"{r.tar['all'][1e-2]:>14.3f}{r.tar['main'][1e-2]:>7.3f}"
                    f"{r.tar['all'][1e-3]:>14.3f}{r.tar['main'][1e-3]:>7.3f}"
                )
        print(f"  ({r.queries} queries: every labelled photo of an identity with two or more)")


def cost(rows: list[Scored]) -> None:
    """What the quality record adds to an engine call: face_qualities over real crops, per face, at a few batch
    sizes (median of 20 runs; the recognizer alone costs milliseconds per face on a CPU)."""
    faces = [s.face for s in rows if s.face is not None and s.face.crop is not None]
    crops = np.stack([f.crop for f in faces if f.crop is not None])
    kps = np.stack([f.kps for f in faces])
    boxes = np.stack([f.bbox for f in faces])
    dets = np.array([f.det_score for f in faces])
    line = []
    for n in (1, 16, 64):
        took = []
        for _ in range(20):
            started = time.perf_counter()
            quality.face_qualities(crops[:n], kps[:n], boxes[:n], dets[:n], np.ones(n)).records()
            took.append(time.perf_counter() - started)
        line.append(f"batch {n}: {np.median(took) / n * 1e6:.0f} us per face")
    print("cost of the quality record (app.engine.quality.face_qualities): " + ", ".join(line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--limit", type=int, default=0, help="the first N labelled photos only (0: all)")
    parser.add_argument(
        "--quality-min", type=float, nargs="*", default=None, help="gates to compare (default: QUALITY_MIN's)"
    )
    parser.add_argument("--calibrate", action="store_true", help="print the raw features per copy too")
    parser.add_argument("--skip-gate", action="store_true", help="(a) only")
    parser.add_argument("--rows", type=Path, default=None, help="keep (a)'s faces in this file, and reuse them")
    args = parser.parse_args(argv)
    setup_logging()
    labels = eval_labels(args.eval_dir)
    if args.limit:
        labels = labels[: args.limit]
    logging.getLogger("app").setLevel(logging.ERROR)  # each gate run's model banner
    settings = Settings()
    started = time.perf_counter()
    engine = FaceEngine.from_settings(settings, InferenceGate(1, 60.0))
    if args.rows and args.rows.is_file():
        rows = pickle.loads(args.rows.read_bytes())  # the faces of an earlier run (--calibrate reruns only)
    else:
        rows = score_copies(engine, labels)
        if args.rows:
            args.rows.write_bytes(pickle.dumps(rows))
    gates = args.quality_min or [settings.quality_min]
    ordering_table(rows, gates[0])
    cost(rows)
    if args.calibrate:
        calibration_dump(rows)
        calibrate(rows)
    if not args.skip_gate:
        for gate in gates:
            gate_table(labels, gate)
    print(f"({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
