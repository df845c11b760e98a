"""Oceano on a CUDA machine, in one run (issue 15): engine stages per batch size, search under load against a plain
insightface service, `python -m app.ingest` throughput, GPU memory and utilisation. Also runs on a CPU machine
(CPU figures, GPU columns n/a), so CI smoke-tests it with tiny durations (tests/bench/test_gpu_smoke.py).

    source /tmp/gpu/env.sh && python -m bench.gpu --json /tmp/gpu-report.json        # on the GPU machine
    python -m bench.gpu --clients 2 --seconds 1 --warmup 0.5 --ingest-images 8 --providers cpu   # a CPU smoke run

Sections, in the order they run (the table at the end follows the same order; progress lines go to stderr):
1. Search under load. `python -m app` (PROVIDERS from --providers, the --env settings, every other setting at its
   default, state in a temporary STATE_DIR, a free port; bench.live.start_server) gets a few photos indexed
   (POST /api/faces, 800 px), then closed-loop clients POST /api/search with a 640 px one-face JPEG for --warmup +
   --seconds at each --clients level (bench/gpu_load.py: the shared loadgen.py's clients, in --load-procs
   processes; found with --loadgen, else beside the checkout in ../shared/gpu/, else in $GPU_KIT or /tmp/gpu).
   Per level: answers 200 per second of the window, their p50/p95/p99, the 503s, any other answer or transport
   error, GPU utilisation (mean, max) and memory (max) from nvidia-smi sampled every 0.5 s during the level, and
   the CPU cores the service's processes used. Then the same against bench/plain_insightface.py (one uvicorn
   worker, one FaceAnalysis over the same two ONNX files, CUDA when offered, a semaphore of 1, no batching, a Qdrant
   Edge collection with Oceano's settings, the same photos indexed), and the ratio Oceano / plain of answers 200/s.
2. Ingest: `python -m app.ingest --path DIR --local` (in-process, its own STATE_DIR, PROVIDERS and --env as the
   service) over --ingest-images JPEGs made from the photos (each a variant with other bytes, same faces):
   images/s as the command reports it (its job, after the models loaded) and over the command's wall time.
3. Engine stages, in this process (last, so that the load figures above see no CUDA context of this process):
   the face models loaded as the service loads them (app.bootstrap.load_models), then for the detector, the
   recognizer, each default head and the whole engine call (FaceEngine.analyze_batch with the default heads), at
   each batch size (the engine's configured set when it exposes one, else --batches): the first call at that size
   and the mean of warm calls (--stage-reps, at most --stage-seconds each), with the ONNX input shapes and run time
   seen through each model's session. The detector runs first, on shapes nothing has run yet; the engine call runs
   last, so its first calls pay only for shapes the rows above did not run.
Photos: --photos DIR (default ../shared/eval/faces-a beside the checkout, else $GPU_KIT/photos or /tmp/gpu/photos).

Budget with the defaults on a GPU: 3 levels x (3 + 15) s x 2 services, two service starts, 1,000 images of ingest,
the stages: about 5 minutes while the engine is fast; a slow ingest (14 images/s) adds a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.faces import FaceHead
from bench.common import EVAL_DIR, REPO, read_bgr
from bench.live import Server, server_env, start_server, stop_server
from bench.overload import jpeg_long_side, prepare, settle
from bench.photos import EXTENSIONS, make_variant_folder

GPU_KIT = Path(os.environ.get("GPU_KIT", "/tmp/gpu"))
DEFAULT_BATCHES = (1, 4, 16, 64)
STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[bench.gpu {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ options
def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"needs whole numbers >= 1: {text!r}")
    return values


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--env takes KEY=VALUE, got {text!r}")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int_list, default=[50, 100, 200], help="client levels (default 50,100,200)")
    p.add_argument("--seconds", type=float, default=15.0, help="counted window per level (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="uncounted load before each window (default 3)")
    p.add_argument("--providers", choices=("auto", "cpu", "cuda"), default="auto", help="PROVIDERS for all parts")
    p.add_argument(
        "--env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VAL",
        help="a setting for the Oceano service, its ingest and the stages (e.g. WORKERS=8); repeatable",
    )
    p.add_argument("--skip-baseline", action="store_true", help="no plain insightface service")
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--skip-stages", action="store_true")
    p.add_argument("--ingest-images", type=int, default=1000, help="images for the ingest run (default 1000)")
    p.add_argument("--photos", type=Path, help="a folder of face photos (default: the eval set, else the GPU kit's)")
    p.add_argument("--index-photos", type=int, default=6, help="photos indexed before the load (default 6)")
    p.add_argument("--query", type=Path, help="the search photo, sent at 640 px (default img1.jpg of --photos)")
    p.add_argument("--loadgen", type=Path, help="loadgen.py (default: ../shared/gpu/, $GPU_KIT or /tmp/gpu)")
    p.add_argument(
        "--load-procs",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 1) // 4)),
        help="load generator processes (default: a quarter of the cores, 1 to 4)",
    )
    p.add_argument("--batches", type=int_list, help="stage batch sizes (default: the engine's set, else 1,4,16,64)")
    p.add_argument("--stage-reps", type=int, default=5, help="warm calls per stage and batch size (default 5)")
    p.add_argument("--stage-seconds", type=float, default=2.0, help="at most this long of warm calls (default 2)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds for a service to answer /health")
    p.add_argument("--json", type=Path, help="write the figures here as JSON (rewritten after every section)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (states, service logs) and say where")
    return p


def find_loadgen(given: Path | None) -> Path | None:
    if given is not None:
        if not given.is_file():
            raise SystemExit(f"--loadgen {given}: no such file")
        return given
    shared = (REPO.parent / "shared", EVAL_DIR.parent.parent)  # beside the checkout, or where OCEANO_EVAL_DIR is
    for candidate in (*(s / "gpu" / "loadgen.py" for s in shared), GPU_KIT / "loadgen.py"):
        if candidate.is_file():
            return candidate
    return None


def photo_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS) if folder.is_dir() else []


def find_photos(given: Path | None) -> Path:
    candidates = [given] if given is not None else [EVAL_DIR, GPU_KIT / "photos"]
    for folder in candidates:
        if photo_files(folder):
            return folder
    raise SystemExit(f"no photos in {' or '.join(map(str, candidates))} (pass --photos DIR)")


# ------------------------------------------------------------------------------------------------ machine
def nvidia_smi(*query: str) -> list[list[str]] | None:
    """Rows of `nvidia-smi --query-...` for the GPU this process would use; None without nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    index = ["-i", visible] if visible.isdigit() and query[0].startswith("--query-gpu") else []
    try:
        out = subprocess.run(
            ["nvidia-smi", *query, *index, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    import onnxruntime

    gpu = nvidia_smi("--query-gpu=name,memory.total,driver_version")
    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "gpu": {"name": gpu[0][0], "memory_mib": float(gpu[0][1]), "driver": gpu[0][2]} if gpu else None,
    }


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]"
        return None


class GpuSampler:
    """nvidia-smi's utilisation and memory of the GPU every `period` seconds in a thread, and the memory of the
    watched processes where nvidia-smi can see their ids (not inside every container)."""

    def __init__(self, pids: Sequence[int] = (), period: float = 0.5, skip: float = 0.0) -> None:
        self.pids = {str(p) for p in pids}
        self.period = period
        self.counted_from = time.monotonic() + skip  # samples of the warm-up are not kept
        self.util: list[float] = []
        self.memory: list[float] = []
        self.process_memory: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = nvidia_smi("--query-gpu=utilization.gpu,memory.used")
            if rows is None:
                return  # no GPU: nothing to sample
            if time.monotonic() < self.counted_from:
                self._stop.wait(self.period)
                continue
            util, memory = number(rows[0][0]), number(rows[0][1])
            if util is not None:
                self.util.append(util)
            if memory is not None:
                self.memory.append(memory)
            apps = nvidia_smi("--query-compute-apps=pid,used_memory") or []
            mine = [number(row[1]) for row in apps if len(row) > 1 and row[0] in self.pids]
            if any(m is not None for m in mine):
                self.process_memory.append(sum(m for m in mine if m is not None))
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def figures(self) -> dict[str, float | None]:
        return {
            "gpu_util_mean": round(float(np.mean(self.util)), 1) if self.util else None,
            "gpu_util_max": max(self.util) if self.util else None,
            "gpu_mem_max_mib": max(self.memory) if self.memory else None,
            "gpu_mem_service_max_mib": max(self.process_memory) if self.process_memory else None,
        }


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (a service with worker processes spends its CPU in them too)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# ------------------------------------------------------------------------------------------------ search load
@dataclass
class LoadPlan:
    query: Path  # the 640 px JPEG
    indexed: list[tuple[str, bytes]]
    loadgen: Path | None
    args: argparse.Namespace
    work: Path


def drive(server: Server, clients: int, plan: LoadPlan) -> dict[str, Any]:
    """One level through bench/gpu_load.py in a process group of its own (killed whole past its deadline)."""
    args = plan.args
    command = [
        sys.executable,
        "-m",
        "bench.gpu_load",
        "--loadgen",
        str(plan.loadgen) if plan.loadgen else "-",
        "--url",
        server.base_url,
        "--image",
        str(plan.query),
        "--clients",
        str(clients),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--procs",
        str(args.load_procs),
    ]
    deadline = args.warmup + args.seconds + 120
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"the load generator did not finish within {deadline:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def load_service(name: str, module: str, env: dict[str, str], plan: LoadPlan) -> dict[str, Any]:
    """Start a service, index the photos, run every client level, stop it."""
    log(f"{name}: starting (python -m {module})")
    started = time.monotonic()
    state = plan.work / name
    server = start_server(REPO, state, timeout=plan.args.start_timeout, env=env, module=module)
    try:
        result: dict[str, Any] = {"start_s": round(time.monotonic() - started, 1), "log": str(server.log_path)}
        log(f"{name}: up in {result['start_s']} s at {server.base_url}; indexing {len(plan.indexed)} photos")
        result["query_faces"] = prepare(server, plan.query.read_bytes(), plan.indexed, busy_retry_s=180.0)
        if result["query_faces"] != 1:
            log(f"WARNING: {name} finds {result['query_faces']} faces in the query photo, not 1")
        if module == "app":
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                result["providers"] = http.get("/status").json().get("providers")
        idle = nvidia_smi("--query-gpu=memory.used")
        result["gpu_mem_idle_mib"] = number(idle[0][0]) if idle else None
        result["levels"] = []
        for clients in plan.args.clients:
            if module == "app":
                settle(server, 10.0)
            log(f"{name}: {clients} clients, {plan.args.warmup:g} s warm-up + {plan.args.seconds:g} s")
            pids = process_tree(server.pid)
            cpu_before = cpu_seconds(pids)
            with GpuSampler(pids, skip=plan.args.warmup) as sampler:
                level = {"clients": clients, **drive(server, clients, plan)}
            level["service_cpu_cores"] = round(
                (cpu_seconds(pids) - cpu_before) / (plan.args.warmup + plan.args.seconds), 2
            )
            level.update(sampler.figures())
            if not server.alive():
                raise RuntimeError(f"{name} exited during the load; its log:\n{server.log_tail()}")
            log(
                f"{name}: {clients} clients: {level['ok_per_s']} answers 200/s, p95 {level['p95_ms']} ms, "
                f"{level['n503']} 503s, errors {level['errors']}"
            )
            result["levels"].append(level)
        return result
    except BaseException:
        log(f"{name} failed; the end of its log:\n{server.log_tail()}")
        raise
    finally:
        stop_server(server)


def choose_query(photos: Path, query: Path | None) -> Path:
    if query is not None:
        return query
    return photos / "img1.jpg" if (photos / "img1.jpg").is_file() else photo_files(photos)[0]


def query_and_indexed(photos: Path, query: Path, work: Path, count: int) -> tuple[Path, list[tuple[str, bytes]]]:
    """The query as a 640 px JPEG in `work`, and the first few other photos as 800 px JPEGs to index."""
    path = work / "query-640.jpg"
    path.write_bytes(jpeg_long_side(query, 640))
    others = [f for f in photo_files(photos) if f.resolve() != query.resolve()][:count]
    return path, [(f.name, jpeg_long_side(f, 800)) for f in others]


def ratios(oceano: dict[str, Any], plain: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not plain:
        return []
    out = []
    for mine, theirs in zip(oceano["levels"], plain["levels"], strict=False):
        base = theirs["ok_per_s"]
        out.append({"clients": mine["clients"], "ratio": round(mine["ok_per_s"] / base, 2) if base else None})
    return out


# ------------------------------------------------------------------------------------------------ ingest
def run_ingest(photos: Path, env: dict[str, str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / "ingest-photos"
    log(f"ingest: writing {args.ingest_images} variants of the photos of {photos}")
    files = make_variant_folder(folder, args.ingest_images, photo_files(photos), threads=min(8, os.cpu_count() or 1))
    state = work / "ingest-state"
    log(f"ingest: python -m app.ingest --local over {len(files)} images")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "app.ingest", "--path", str(folder), "--local"],
        cwd=REPO,
        env=server_env(REPO, state, {**env, "LOG_LEVEL": "info"}),
        capture_output=True,
        text=True,
        timeout=max(600.0, args.ingest_images * 0.5),
    )
    wall = time.monotonic() - started
    (work / "ingest.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"python -m app.ingest exited {out.returncode}:\n{(out.stdout + out.stderr)[-3000:]}")
    text = out.stdout + out.stderr

    def figure(pattern: str, kind: type[float] | type[int] = float) -> float | None:
        found = re.findall(pattern, text)
        return kind(found[-1]) if found else None

    result = {
        "images": len(files),
        "ingested": figure(r"ingested\s+(\d+)", int),
        "faces_added": figure(r"faces added\s+(\d+)", int),
        "images_per_s": figure(r"([\d.]+) images/s"),
        "wall_s": round(wall, 1),
        "images_per_s_wall": round(len(files) / wall, 1),
    }
    log(f"ingest: {result['images_per_s']} images/s ({result['images_per_s_wall']} over the wall time)")
    return result


# ------------------------------------------------------------------------------------------------ stages
class TimedSession:
    """In front of a model's ONNX session: the input shape and seconds of every run."""

    def __init__(self, real: Any, name: str) -> None:
        self._real = real
        self.name = name
        self.runs: list[tuple[str, float]] = []

    def run(self, output_names: Any, input_feed: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = self._real.run(output_names, input_feed, *args, **kwargs)
        shape = "x".join(str(d) for d in next(iter(input_feed.values())).shape)
        self.runs.append((shape, time.perf_counter() - started))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def timed(model: Any, name: str) -> list[TimedSession]:
    """Put a TimedSession in front of the model's ONNX session (`session` or `_session`); none where the model
    keeps it otherwise (the rows then have no ONNX figures, the timings of the calls stay)."""
    for attribute in ("session", "_session"):
        real = getattr(model, attribute, None)
        if real is None or not callable(getattr(real, "run", None)):
            continue
        timer = real if isinstance(real, TimedSession) else TimedSession(real, name)
        try:
            setattr(model, attribute, timer)
        except AttributeError:
            return []
        return [timer]
    return []


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def configured_batches(engine: Any, settings: Any) -> list[int] | None:
    """The engine's fixed batch sizes, where this tree's engine has them (names it may use; else None)."""
    for owner, name in ((engine, "batch_sizes"), (settings, "batch_sizes"), (settings, "engine_batch_sizes")):
        value = getattr(owner, name, None)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        try:
            sizes = sorted({int(v) for v in value}) if value else []
        except (TypeError, ValueError):
            continue
        if sizes:
            return sizes
    return None


@dataclass
class Stage:
    name: str
    unit: str  # what one item of a batch is
    call: Callable[[int], object]
    timers: list[TimedSession]  # the ONNX sessions the call runs, where they could be watched


def measure(stage: Stage, batch: int, reps: int, budget: float) -> dict[str, Any]:
    """One row: the first call at this batch size, then warm calls; an engine whose parts this tree names
    otherwise gives a row with the error instead (the other rows still run)."""
    try:
        return measured(stage, batch, reps, budget)
    except Exception as exc:
        log(f"stages: {stage.name} at batch {batch} FAILED: {type(exc).__name__}: {exc}")
        return {"model": stage.name, "batch": batch, "unit": stage.unit, "error": f"{type(exc).__name__}: {exc}"}


def measured(stage: Stage, batch: int, reps: int, budget: float) -> dict[str, Any]:
    def runs() -> list[tuple[str, float]]:
        named = len(stage.timers) > 1  # the engine call: say which model each shape went to
        return [(f"{t.name} {shape}" if named else shape, s) for t in stage.timers for shape, s in t.runs]

    def clear() -> None:
        for timer in stage.timers:
            timer.runs.clear()

    clear()
    started = time.perf_counter()
    stage.call(batch)
    first = time.perf_counter() - started
    first_runs = runs()
    clear()
    warm: list[float] = []
    while len(warm) < max(1, reps) and (not warm or sum(warm) < budget):
        started = time.perf_counter()
        stage.call(batch)
        warm.append(time.perf_counter() - started)
    mean = float(np.mean(warm))
    onnx_warm = sum(s for _, s in runs()) / len(warm) if stage.timers else None
    return {
        "model": stage.name,
        "batch": batch,
        "unit": stage.unit,
        "first_ms": round(first * 1e3, 2),
        "warm_ms": round(mean * 1e3, 2),
        "warm_reps": len(warm),
        "warm_ms_per_item": round(mean * 1e3 / batch, 3),
        "items_per_s": round(batch / mean, 1),
        "onnx_warm_ms": round(onnx_warm * 1e3, 2) if onnx_warm is not None else None,
        "onnx_first_shapes": sorted({shape for shape, _ in first_runs}),
        "onnx_first_runs": len(first_runs),
    }


def run_stages(query: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    from app.bootstrap import load_models
    from app.config import Settings

    log("stages: loading the face models and heads as the service does")
    started = time.monotonic()
    with environment(env):
        settings = Settings()
        engine, heads = load_models(settings)
    result: dict[str, Any] = {"load_s": round(time.monotonic() - started, 2), "providers": engine.providers}
    warm_up = next((getattr(engine, n) for n in ("warm_up", "warmup") if callable(getattr(engine, n, None))), None)
    result["warmup_s"] = None
    if warm_up is not None:
        started = time.monotonic()
        warm_up()
        result["warmup_s"] = round(time.monotonic() - started, 2)
    configured = configured_batches(engine, settings)
    batches = args.batches or configured or list(DEFAULT_BATCHES)
    result["batches"] = batches
    result["batches_from"] = "--batches" if args.batches else ("engine" if configured else "default")
    image = read_bgr(query)
    default_heads = heads.select(None)
    result["heads"] = [h.name for h in default_heads]

    detector = Stage(
        "detector",
        "image",
        lambda n: engine.detector.detect([image] * n),
        timed(getattr(engine, "detector", None), "detector"),
    )
    result["rows"] = rows = []
    log(f"stages: {engine.providers[0]}, batch sizes {batches}")
    with GpuSampler([os.getpid()]) as sampler:
        for batch in batches:  # the detector first: its first calls are not yet warmed by anything else
            rows.append(measure(detector, batch, args.stage_reps, args.stage_seconds))
        log("stages: detector done")
        measure_models(engine, image, default_heads, detector, batches, args, rows)
    result["gpu"] = sampler.figures()
    return result


def measure_models(
    engine: Any,
    image: np.ndarray,
    default_heads: Sequence[FaceHead],
    detector: Stage,
    batches: list[int],
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
) -> None:
    """The recognizer, the default heads and the whole engine call, once the detector's rows are done."""
    try:  # one face of the query, found without running the recognizer (its first call is measured below)
        found = engine.analyze_batch([image], embed=False)[0]
    except TypeError:  # an engine without embed=
        found = engine.analyze_batch([image])[0]
    if not found:
        raise RuntimeError("no face in the query photo: the recognizer and heads need one")
    face = found[0]
    crop = face.crop
    if crop is None:
        raise RuntimeError("the engine gave a face without its aligned crop")
    recognizer_timers = timed(getattr(engine, "recognizer", None), "recognizer")
    stages = [Stage("recognizer", "face", lambda n: engine.recognizer.embed([crop] * n), recognizer_timers)]

    def head_call(head: FaceHead) -> Callable[[int], object]:
        return lambda n: head.run([image] * n, [[face] for _ in range(n)])

    stages += [Stage(f"head {h.name}", "face", head_call(h), timed(h, h.name)) for h in default_heads]
    every = [t for stage in [detector, *stages] for t in stage.timers]
    stages.append(
        Stage("engine call", "image", lambda n: engine.analyze_batch([image] * n, heads=default_heads), every)
    )
    for stage in stages:
        for batch in batches:
            rows.append(measure(stage, batch, args.stage_reps, args.stage_seconds))
        log(f"stages: {stage.name} done")


# ------------------------------------------------------------------------------------------------ output
def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    gpu = m["gpu"]
    print(f"\n== bench.gpu: {gpu['name'] if gpu else 'no GPU'}; {m['cpu_count']} CPUs; python {m['python']}")
    print(f"onnxruntime {m['onnxruntime']} {m['onnxruntime_providers']}; --providers {report['options']['providers']}")
    print(
        f"settings passed: {report['options']['env'] or 'none'}; load average at start {m['load_average']}, "
        f"at the end {m.get('load_average_end')}"
    )
    search = report.get("search") or {}
    for name in ("oceano", "plain"):
        part = search.get(name)
        if not part or "levels" not in part:
            continue
        extra = f", providers {part['providers']}" if part.get("providers") else ""
        print(
            f"\n-- search under load: {name} (started in {part['start_s']} s{extra}; "
            f"query faces {part['query_faces']}; GPU memory idle {fmt(part['gpu_mem_idle_mib'], 0)} MiB)"
        )
        print(
            f"{'clients':>7} {'200/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'503s':>6} "
            f"{'GPU % mean/max':>14} {'GPU MiB all/svc':>15} {'CPU cores':>9}  other answers"
        )
        for lv in part["levels"]:
            gpu_pct = f"{fmt(lv['gpu_util_mean'], 0)}/{fmt(lv['gpu_util_max'], 0)}"
            gpu_mib = f"{fmt(lv['gpu_mem_max_mib'], 0)}/{fmt(lv['gpu_mem_service_max_mib'], 0)}"
            print(
                f"{lv['clients']:>7} {fmt(lv['ok_per_s']):>8} {fmt(lv['p50_ms'], 0):>8} {fmt(lv['p95_ms'], 0):>8} "
                f"{fmt(lv['p99_ms'], 0):>8} {lv['n503']:>6} {gpu_pct:>14} {gpu_mib:>15} "
                f"{fmt(lv['service_cpu_cores'], 2):>9}  {lv['errors'] or '-'}"
            )
    if search.get("ratio"):
        print(
            "\n-- Oceano / plain insightface, answers 200/s: "
            + ", ".join(f"{r['clients']} clients {fmt(r['ratio'], 2)}x" for r in search["ratio"])
        )
    ingest = report.get("ingest")
    if ingest and "images" in ingest:
        print(
            f"\n-- python -m app.ingest --local: {ingest['images']} images, {fmt(ingest['ingested'], 0)} ingested, "
            f"{fmt(ingest['faces_added'], 0)} faces: {fmt(ingest['images_per_s'])} images/s "
            f"(job), {fmt(ingest['images_per_s_wall'])} images/s over {ingest['wall_s']} s wall (model load included)"
        )
    stages = report.get("stages")
    if stages and "rows" in stages:
        gpu = stages["gpu"]
        print(
            f"\n-- engine stages ({stages['providers'][0]}; models loaded in {stages['load_s']} s, warm-up "
            f"{fmt(stages['warmup_s'], 2)} s; batch sizes {stages['batches']} from {stages['batches_from']}; "
            f"GPU % mean/max {fmt(gpu['gpu_util_mean'], 0)}/{fmt(gpu['gpu_util_max'], 0)}, GPU MiB max "
            f"{fmt(gpu['gpu_mem_max_mib'], 0)}, this process {fmt(gpu['gpu_mem_service_max_mib'], 0)})"
        )
        print(
            f"{'model':<16} {'batch':>5} {'first ms':>10} {'warm ms':>9} {'ms/item':>8} {'items/s':>9} "
            f"{'onnx ms':>8}  ONNX input shapes of the first call"
        )
        for r in stages["rows"]:
            if "error" in r:
                print(f"{r['model']:<16} {r['batch']:>5}  failed: {r['error']}")
                continue
            shapes = ", ".join(r["onnx_first_shapes"]) if r["onnx_first_shapes"] else "-"
            print(
                f"{r['model']:<16} {r['batch']:>5} {fmt(r['first_ms']):>10} {fmt(r['warm_ms']):>9} "
                f"{fmt(r['warm_ms_per_item'], 2):>8} {fmt(r['items_per_s'], 0):>9} {fmt(r['onnx_warm_ms']):>8}  "
                f"{shapes} ({r['onnx_first_runs']} runs)"
            )
    for name, error in report["errors"].items():
        lines = error.splitlines() or [""]
        cause = next((line for line in reversed(lines) if "Error" in line), lines[-1])
        print(f"\n!! {name} failed (the whole message is in the JSON and above): {cause}")


def save(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n")


def run_part(report: dict[str, Any], name: str, path: Path | None, work: Callable[[], Any]) -> Any:
    """Run one part; a failure is recorded (and printed) and the run goes on to the next part."""
    try:
        result = work()
    except (Exception, SystemExit) as exc:
        detail = "".join(traceback.format_exception(exc))
        log(f"{name} FAILED:\n{detail}")
        report["errors"][name] = f"{type(exc).__name__}: {exc}"
        result = None
    save(report, path)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loadgen = find_loadgen(args.loadgen)
    photos = find_photos(args.photos)
    env = {"PROVIDERS": args.providers, **dict(args.env)}
    report: dict[str, Any] = {
        "options": {
            "clients": args.clients,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "providers": args.providers,
            "env": dict(args.env),
            "photos": str(photos),
            "loadgen": str(loadgen) if loadgen else "bench.overload closed loop (no loadgen.py found)",
            "load_procs": args.load_procs,
        },
        "machine": machine(),
        "errors": {},
    }
    log(f"photos {photos}; load generator {report['options']['loadgen']}; machine {report['machine']}")
    work = Path(tempfile.mkdtemp(prefix="oceano-bench-gpu-"))
    try:
        source = choose_query(photos, args.query)
        query, indexed = query_and_indexed(photos, source, work, args.index_photos)
        plan = LoadPlan(query, indexed, loadgen, args, work)
        search: dict[str, Any] = {"query": f"{source} at 640 px", "indexed": [n for n, _ in indexed]}
        report["search"] = search
        search["oceano"] = run_part(report, "oceano", args.json, lambda: load_service("oceano", "app", env, plan))
        if not args.skip_baseline:
            plain_env = {"PROVIDERS": args.providers}
            search["plain"] = run_part(
                report, "plain", args.json, lambda: load_service("plain", "bench.plain_insightface", plain_env, plan)
            )
            if search["oceano"] and search["plain"]:
                search["ratio"] = ratios(search["oceano"], search["plain"])
        if not args.skip_ingest:
            report["ingest"] = run_part(report, "ingest", args.json, lambda: run_ingest(photos, env, args, work))
        if not args.skip_stages:
            report["stages"] = run_part(report, "stages", args.json, lambda: run_stages(query, env, args))
        report["total_s"] = round(time.monotonic() - STARTED, 1)
        report["machine"]["load_average_end"] = load_average()
        save(report, args.json)
        print_table(report)
        print(f"\ntotal {report['total_s']} s" + (f"; figures in {args.json}" if args.json else ""))
    finally:
        if args.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
