"""Per-stage CPU milliseconds per image of a search, for this tree against another commit, alternated.

The stages of one search, as the service runs them (no HTTP): decode (the upload's JPEG to pixels), detect pre
(letterbox and input tensor), detect run (the SCRFD session), detect post (anchor decode, threshold, NMS),
align (alignment to 112x112 crops and the face objects), embed (the ArcFace tensor, session and normalisation),
search (the Qdrant Edge query of every face) and response (the answer's objects and JSON).

Measured through the code's own entry points (FaceService.search on an opened service, no request batcher): the
detector, its session, the recognizer and the store are wrapped by timers, and each stage is what lies between
two of them. CPU is time.thread_time for the stages that run in the calling thread, time.process_time (every
thread of the process) for those that run threads of their own (detect run, embed: ONNX Runtime's pool; search:
the store's); wall is perf_counter.
Photos: the eval set's JPEGs (../shared/eval/faces-a, or OCEANO_EVAL_DIR), re-encoded at 640 px long side, as
bench/overload.py sends them; the run is skipped, saying so, when the set is absent.

Variants: `standin` runs the stand-in engine (ENGINE_STANDIN=1: ONNX outputs recorded once per input shape and
replayed, so detect run and embed cost next to nothing: what remains is the ceiling's CPU work), `real` the
ONNX models on this CPU; each at `--batches` images per engine call (1: the CPU service, one image per detector
call on its own canvas; 16: a GPU's DET_BATCH, one 640x640 canvas for all).

The comparison: each tree runs in a subprocess of its own (`python bench/stages.py --worker` with PYTHONPATH
and the working directory set to the tree), REF then this tree, `--rounds` times (A B A B), and the table gives
the mean per stage of each and the ratio REF / this tree. REF is checked out as a detached worktree in a
temporary folder, removed at the end.

`--same-process ROUNDS` instead compares the stages this work changed (detect pre, detect post, align) with the
replaced per-image code, kept as the reference in bench/reference_scrfd.py, alternated in one process.

    python -m bench.stages [--ref main] [--rounds 2] [--variants standin,real] [--batches 1,16]
    python -m bench.stages --same-process 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EVAL_DIR = Path(os.environ.get("OCEANO_EVAL_DIR", REPO.parent / "shared" / "eval" / "faces-a"))
STAGES = ("decode", "detect pre", "detect run", "detect post", "align", "embed", "search", "response")
PHOTOS = 16
STORE_POINTS = 20_000
OWN_THREADS = frozenset({"detect run", "embed", "search"})


# ------------------------------------------------------------------------------------------------ worker
class Clocks:
    """Thread CPU, process CPU and wall seconds accumulated per stage."""

    KINDS = ("thread", "process", "wall")

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = {kind: defaultdict(float) for kind in self.KINDS}

    def reset(self) -> None:
        for table in self.totals.values():
            table.clear()

    @staticmethod
    def now() -> tuple[float, float, float]:
        return time.thread_time(), time.process_time(), time.perf_counter()

    def add(self, stage: str, since: tuple[float, ...], until: tuple[float, ...]) -> None:
        for kind, a, b in zip(self.KINDS, since, until, strict=True):
            self.totals[kind][stage] += b - a


Mark = tuple[tuple[float, float, float], tuple[float, float, float]]  # (start, end) of Clocks.now()


def timed(clocks: Clocks, stage: str, fn: Callable[..., Any], marks: list[Mark] | None = None) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = Clocks.now()
        try:
            return fn(*args, **kwargs)
        finally:
            end = Clocks.now()
            clocks.add(stage, start, end)
            if marks is not None:
                marks.append((start, end))

    return wrapper


class TimedSession:
    """An ONNX session whose runs are timed (the first start and the last end of a detector call's runs)."""

    def __init__(self, session: Any, marks: list[Mark]) -> None:
        self._session = session
        self._marks = marks

    def run(self, *args: Any, **kwargs: Any) -> Any:
        start = Clocks.now()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._marks.append((start, Clocks.now()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def jpeg_640(path: Path) -> bytes:
    import cv2

    image = cv2.imread(str(path))
    if image is None:
        raise SystemExit(f"cannot read {path}")
    scale = 640 / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])


@contextmanager
def opened_service(standin: bool, batch: int, state: Path) -> Iterator[Any]:
    """The tree's FaceService on a fresh state with STORE_POINTS synthetic faces, the detector batching `batch`
    images per call (a fixed 640 canvas above 1)."""
    import uuid

    import numpy as np

    from app.bootstrap import open_services
    from app.config import Settings
    from app.store import FacePoint

    # The detector's batch: DET_BATCH_SIZES since the ONNX base (issue 15), DET_BATCH before it (a REF may be older).
    if "det_batch_sizes" in Settings.model_fields:
        det_batch: dict[str, Any] = {"det_batch_sizes": (1, batch) if batch > 1 else (1,)}
    else:
        det_batch = {"det_batch": batch if batch > 1 else 0}
    settings = Settings(
        state_dir=state,
        qdrant_path=state / "qdrant",
        thumbs_dir=state / "thumbs",
        engine_standin=standin,
        request_batch=max(batch, 1),
        **det_batch,
    )
    services = open_services(settings, batcher=False, jobs=False, state=False, keys=False)
    try:
        rng = np.random.default_rng(0)
        matrix = rng.standard_normal((STORE_POINTS, services.engine.dim)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        for start in range(0, STORE_POINTS, 5000):
            services.store.upsert(
                [
                    FacePoint(id=str(uuid.uuid4()), vector=v, payload={"file": f"s/{start + j}.jpg", "face_index": 0})
                    for j, v in enumerate(matrix[start : start + 5000])
                ]
            )
        services.store.optimize()
        yield services.service
    finally:
        services.close()


def measure(standin: bool, batch: int, photos: list[bytes], passes: int) -> dict[str, dict[str, float]]:
    """CPU and wall ms per image of each stage, over `passes` passes of the photos in calls of `batch` images."""
    from app.api.schemas import SearchOut, face_out

    with tempfile.TemporaryDirectory(prefix="oceano-stages-") as tmp, opened_service(standin, batch, Path(tmp)) as svc:
        engine = svc.engine
        clocks = Clocks()
        det_marks: list[Mark] = []  # each session run of a detector call, then the call itself
        engine.detector.detect = timed(clocks, "_detect", engine.detector.detect, det_marks)
        engine.detector.session = TimedSession(engine.detector.session, det_marks)
        engine.recognizer.embed = timed(clocks, "embed", engine.recognizer.embed)
        svc.store.search = timed(clocks, "search", svc.store.search)
        analyze = engine.analyze_batch
        engine.analyze_batch = timed(clocks, "_analyze", analyze)
        groups = [photos[i : i + batch] for i in range(0, len(photos), batch)]
        for group in groups:  # warm-up: every shape recorded (stand-in) or run once
            svc.search([svc.decode(data) for data in group])
        clocks.reset()
        images = 0
        for _ in range(passes):
            for group in groups:
                start = Clocks.now()
                decoded = [svc.decode(data) for data in group]
                clocks.add("decode", start, Clocks.now())
                det_marks.clear()
                start = Clocks.now()
                results = svc.search(decoded)
                answers = [
                    SearchOut(
                        faces=[face_out(f) for f in row], took_ms=0.0, model=svc.engine.pack.name
                    ).model_dump_json()
                    for row in results
                ]
                end = Clocks.now()
                assert len(answers) == len(group)
                clocks.add("_search_call", start, end)
                runs = det_marks[:-1]  # one detector call per search (one chunk: DET_BATCH >= its images)
                detect_start, detect_end = det_marks[-1]
                clocks.add("detect pre", detect_start, runs[0][0])
                clocks.add("detect run", runs[0][0], runs[-1][1])
                clocks.add("detect post", runs[-1][1], detect_end)
                images += len(group)
        # The rest of the engine call is alignment (and the face objects); the rest of the search call the
        # response (original coordinates, answer objects, JSON).
        out: dict[str, dict[str, float]] = {}
        for kind, table in clocks.totals.items():
            align = table["_analyze"] - table["_detect"] - table["embed"]
            response = table["_search_call"] - table["_analyze"] - table["search"]
            values = {**table, "align": align, "response": response}
            out[kind] = {stage: values[stage] * 1e3 / images for stage in STAGES}
        # CPU: this thread's for the stages that run in it; the process's for those that run threads of their own
        # (ONNX Runtime's pool, the store's), whose idle spinning would otherwise land on the next stage.
        out["cpu"] = {stage: out["process" if stage in OWN_THREADS else "thread"][stage] for stage in STAGES}
        return out


def worker(args: argparse.Namespace) -> None:
    import app

    paths = sorted(p for p in EVAL_DIR.glob("*.jpg"))[:PHOTOS]
    photos = [jpeg_640(p) for p in paths]
    result: dict[str, Any] = {"app": app.__file__, "variants": {}}
    for variant in args.variants.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            passes = args.passes if variant == "standin" else max(1, args.passes // 4)
            result["variants"][f"{variant} b{batch}"] = measure(variant == "standin", batch, photos, passes)
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------------ same process
def same_process(rounds: int) -> None:
    """The engine stages this tree changed (detect pre, detect post, align), the replaced per-image code (kept in
    bench/reference_scrfd.py as the reference) against this tree's, alternated in one process on the same
    photos and the same detector outputs: thread CPU ms per image."""
    import cv2
    import numpy as np

    from app.config import Settings
    from app.engine import FaceEngine, InferenceGate

    engine = FaceEngine.from_settings(Settings(), InferenceGate(1, 5.0))
    paths = sorted(EVAL_DIR.glob("*.jpg"))[:PHOTOS]
    images = [cv2.imdecode(np.frombuffer(jpeg_640(p), np.uint8), cv2.IMREAD_COLOR) for p in paths]
    for batch in (1, 16):
        same_process_batch(engine.detector, images, batch, rounds)


def same_process_batch(det: Any, images: list[Any], batch: int, rounds: int) -> None:
    import cv2
    import numpy as np

    from app.engine.align import ARCFACE_TEMPLATE, CROP_SIZE, align_faces
    from app.engine.scrfd import decode_batch, letterbox_batch
    from bench.reference_scrfd import old_blob, old_decode, old_similarity_transform

    groups = [images[i : i + batch] for i in range(0, len(images), batch)]
    fixed = batch > 1
    tensors = [letterbox_batch(g, det.det_size, fixed=fixed) for g in groups]
    outs = [det.session.run(det.output_names, {det.input_name: blob}) for blob, _ in tensors]
    found = [
        decode_batch(o, sc, blob.shape[2:], threshold=det.threshold)
        for o, (blob, sc) in zip(outs, tensors, strict=True)
    ]
    faces = [(img, d.kps) for g, ds in zip(groups, found, strict=True) for img, d in zip(g, ds, strict=True)]

    def old_pre() -> None:
        for g in groups:
            old_blob(g, fixed)

    def new_pre() -> None:
        for g in groups:
            letterbox_batch(g, det.det_size, fixed=fixed)

    def old_post() -> None:
        for o, (blob, sc) in zip(outs, tensors, strict=True):
            for i in range(len(sc)):
                old_decode([x[i] for x in o], float(sc[i]), blob.shape[3], blob.shape[2], det.threshold, 0)

    def new_post() -> None:
        for o, (blob, sc) in zip(outs, tensors, strict=True):
            decode_batch(o, sc, blob.shape[2:], threshold=det.threshold)

    def old_align() -> None:
        for img, kps in faces:
            for k in kps:
                cv2.warpAffine(img, old_similarity_transform(k, ARCFACE_TEMPLATE), (CROP_SIZE, CROP_SIZE))

    def new_align() -> None:
        for g, ds in zip(groups, found, strict=True):
            sources = [img for img, d in zip(g, ds, strict=True) for _ in range(len(d.kps))]
            align_faces(sources, np.concatenate([d.kps for d in ds]))

    steps = {
        "detect pre": (old_pre, new_pre),
        "detect post": (old_post, new_post),
        "align": (old_align, new_align),
    }
    totals: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for stage, pair in steps.items():
            for which, fn in zip(("old", "new"), pair, strict=True):
                start = time.thread_time()
                fn()
                totals[f"{which} {stage}"].append((time.thread_time() - start) * 1e3 / len(images))
    count = sum(len(k) for _, k in faces)
    print(f"\nsame process, {batch} image(s) per call: thread CPU ms per image, median of {rounds} alternated rounds")
    print(f"({len(images)} photos, {count} faces)")
    for stage in steps:
        old, new = statistics.median(totals[f"old {stage}"]), statistics.median(totals[f"new {stage}"])
        print(f"  {stage:<12} old {old:7.3f}  new {new:7.3f}  ratio {old / new:5.2f}")


# ------------------------------------------------------------------------------------------------ driver
def run_worker(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "LOG_LEVEL": "error"}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--variants",
        args.variants,
        "--batches",
        args.batches,
        "--passes",
        str(args.passes),
    ]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"worker in {tree} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(result["app"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the worker for {tree} imported {result['app']}: not the tree under test")
    return result


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def print_table(ref_label: str, runs: dict[str, list[dict[str, Any]]], labels: tuple[str, str]) -> None:
    ref_runs, cur_runs = runs[labels[0]], runs[labels[1]]
    for variant in ref_runs[0]["variants"]:
        print(f"\n{variant}: ms per image, mean of {len(ref_runs)} runs each (REF {ref_label} / this tree)")
        header = (
            f"{'stage':<12} {'REF cpu':>8} {'new cpu':>8} {'ratio':>6}   {'REF wall':>8} {'new wall':>8} {'ratio':>6}"
        )
        print(header)
        print("-" * len(header))
        totals = {"ref cpu": 0.0, "cur cpu": 0.0, "ref wall": 0.0, "cur wall": 0.0}
        for stage in STAGES:
            row = []
            for kind in ("cpu", "wall"):
                ref = statistics.fmean(r["variants"][variant][kind][stage] for r in ref_runs)
                cur = statistics.fmean(r["variants"][variant][kind][stage] for r in cur_runs)
                totals[f"ref {kind}"] += ref
                totals[f"cur {kind}"] += cur
                row.append(f"{ref:8.3f} {cur:8.3f} {ref / cur if cur > 1e-6 else float('nan'):6.2f}")
            print(f"{stage:<12} {row[0]}   {row[1]}")
        rc, cc, rw, cw = totals["ref cpu"], totals["cur cpu"], totals["ref wall"], totals["cur wall"]
        print(f"{'total':<12} {rc:8.3f} {cc:8.3f} {rc / cc:6.2f}   {rw:8.3f} {cw:8.3f} {rw / cw:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each tree (default 2)")
    parser.add_argument("--variants", default="standin,real", help="standin, real or both (default both)")
    parser.add_argument("--batches", default="1,16", help="images per engine call (default 1,16)")
    parser.add_argument("--passes", type=int, default=8, help="passes over the photos, stand-in (real: a quarter)")
    parser.add_argument(
        "--same-process",
        type=int,
        metavar="ROUNDS",
        help="instead: the replaced per-image code against this tree's, alternated in this process, ROUNDS times",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (EVAL_DIR / "img1.jpg").is_file():
        print(f"SKIPPED: the eval set is not at {EVAL_DIR} (set OCEANO_EVAL_DIR); nothing measured")
        return
    if args.worker:
        worker(args)
        return
    if args.same_process:
        same_process(args.same_process)
        return
    sha = git("rev-parse", "--short", f"{args.ref}^{{commit}}")
    head = git("rev-parse", "--short", "HEAD")
    dirty = " +uncommitted" if git("status", "--porcelain", "--untracked-files=no") else ""
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="oceano-stages-ref-") as tmp:
        ref_dir = Path(tmp) / f"ref-{sha}"
        git("worktree", "add", "--detach", str(ref_dir), sha)
        try:
            labels = (f"REF {sha}", f"this tree {head}{dirty}")
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
            for round_ in range(args.rounds):
                for label, tree in zip(labels, (ref_dir, REPO), strict=True):
                    started = time.perf_counter()
                    runs[label].append(run_worker(tree, args))
                    print(f"round {round_ + 1} {label}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(ref_dir)], timeout=120)
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], timeout=120)
    print(
        f"per-stage ms per image of a search, {PHOTOS} eval photos at 640 px, store {STORE_POINTS} points; "
        f"{args.rounds} rounds alternated (REF, this tree); {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print_table(sha, runs, labels)


if __name__ == "__main__":
    main()
