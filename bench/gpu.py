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
   the CPU cores the service's processes used, and those of the process owning the engine (with WORKERS > 1 the
   core) with its CPU ms per answer: what bounds the searches/s when the GPU waits. Then the same against
   bench/plain_insightface.py (one uvicorn worker, one FaceAnalysis over the same two ONNX files, CUDA when offered,
   a semaphore of 1, no batching, a Qdrant Edge collection with Oceano's settings, the same photos indexed), and
   the ratio Oceano / plain of answers 200/s. Each --variant runs the same load on Oceano started with more
   settings (on top of --env), between the two, with its ratio to Oceano's answers 200/s per level: several
   configurations measured in one run of a machine lent for minutes.
2. Ingest: `python -m app.ingest --path DIR --local` (in-process, its own STATE_DIR, PROVIDERS and --env as the
   service) over --ingest-images JPEGs made from the photos (each a variant with other bytes, same faces):
   images/s as the command reports it (its job, after the models loaded) and over the command's wall time; then
   again with each --variant's settings (its own store, the same files), with its ratio to the defaults' images/s.
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
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from app.engine.batcher import DISPATCHER_OS_NAME
from bench.common import EVAL_DIR, REPO, int_list, key_value
from bench.gpu_machine import (
    STARTED,
    GpuSampler,
    cpu_seconds,
    load_average,
    log,
    machine,
    number,
    nvidia_smi,
    process_tree,
    thread_cpu_seconds,
)
from bench.gpu_report import print_table
from bench.gpu_stages import run_stages
from bench.live import Server, server_env, start_server, stop_server
from bench.overload import jpeg_long_side, prepare, settle
from bench.photos import EXTENSIONS, make_variant_folder

GPU_KIT = Path(os.environ.get("GPU_KIT", "/tmp/gpu"))


# ------------------------------------------------------------------------------------------------ options
def variant(text: str) -> tuple[str, dict[str, str]]:
    """An argparse type for `--variant "NAME:KEY=VALUE [KEY=VALUE ...]"`: a name and the settings it adds (pairs
    apart by spaces: a value may hold commas, as batch sizes do)."""
    name, sep, settings = text.partition(":")
    if not sep or not name.strip() or not settings.split():
        raise argparse.ArgumentTypeError(f'--variant takes "NAME:KEY=VALUE [KEY=VALUE ...]", got {text!r}')
    return name.strip(), dict(key_value(pair) for pair in settings.split())


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
    p.add_argument(
        "--variant",
        type=variant,
        action="append",
        default=[],
        metavar="'NAME:KEY=VAL [KEY=VAL]'",
        help="also run the search load and the ingest with these settings on top of --env, compared with the "
        "defaults' (repeatable; e.g. 'conc2:GPU_CONCURRENCY=2' 'sizes:DET_BATCH_SIZES=4,16 REC_BATCH_SIZES=16,64')",
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
                status = http.get("/status").json()
            # What ran, as the service says: a variant's settings are seen taking effect.
            result["providers"] = status.get("providers")
            result["gpu_concurrency"] = status.get("gpu_concurrency")
            result["batch_sizes"] = (status.get("runtime") or {}).get("batch_sizes")
        idle = nvidia_smi("--query-gpu=memory.used")
        result["gpu_mem_idle_mib"] = number(idle[0][0]) if idle else None
        result["levels"] = []
        for clients in plan.args.clients:
            if module == "app":
                settle(server, 10.0)
            log(f"{name}: {clients} clients, {plan.args.warmup:g} s warm-up + {plan.args.seconds:g} s")
            pids = process_tree(server.pid)
            cpu_before, core_before = cpu_seconds(pids), cpu_seconds([server.pid])
            dispatcher_before = thread_cpu_seconds(server.pid, DISPATCHER_OS_NAME)
            with GpuSampler(pids, skip=plan.args.warmup) as sampler:
                level = {"clients": clients, **drive(server, clients, plan)}
            span = plan.args.warmup + plan.args.seconds
            level["service_cpu_cores"] = round((cpu_seconds(pids) - cpu_before) / span, 2)
            # The process that owns the engine (with WORKERS > 1, the core): its CPU per answer bounds the design.
            core_cores = (cpu_seconds([server.pid]) - core_before) / span
            level["core_cpu_cores"] = round(core_cores, 2)
            level["core_cpu_ms_per_answer"] = (
                round(core_cores / level["ok_per_s"] * 1e3, 2) if level["ok_per_s"] else None
            )
            # Its request batcher's dispatcher threads (one per GPU_CONCURRENCY): serial work; near 1 core per
            # thread, they are the bound.
            dispatcher_after = thread_cpu_seconds(server.pid, DISPATCHER_OS_NAME)
            dispatcher_cores = (
                (dispatcher_after - dispatcher_before) / span
                if dispatcher_before is not None and dispatcher_after is not None
                else None
            )
            level["dispatcher_cpu_cores"] = round(dispatcher_cores, 2) if dispatcher_cores is not None else None
            level["dispatcher_cpu_ms_per_answer"] = (
                round(dispatcher_cores / level["ok_per_s"] * 1e3, 2)
                if dispatcher_cores is not None and level["ok_per_s"]
                else None
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
INGEST_PHOTOS = "ingest-photos"  # under the work folder: the files every ingest run reads


def ingest_folder(photos: Path, args: argparse.Namespace, work: Path) -> list[Path]:
    """--ingest-images variants of the photos (written once; every setting's run reads the same files)."""
    folder = work / INGEST_PHOTOS
    log(f"ingest: writing {args.ingest_images} variants of the photos of {photos}")
    return make_variant_folder(folder, args.ingest_images, photo_files(photos), threads=min(8, os.cpu_count() or 1))


def run_ingest(
    files: list[Path], env: dict[str, str], args: argparse.Namespace, work: Path, name: str = "defaults"
) -> dict[str, Any]:
    """`python -m app.ingest --local` over `files` with these settings, into a store of its own."""
    folder = work / INGEST_PHOTOS
    state = work / f"ingest-state-{name}"
    log(f"ingest ({name}): python -m app.ingest --local over {len(files)} images")
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
    (work / f"ingest-{name}.log").write_text(out.stdout + out.stderr)
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
        "inference_workers": figure(r"(\d+) inference workers", int),  # the run's own log: a setting taking effect
        "wall_s": round(wall, 1),
        "images_per_s_wall": round(len(files) / wall, 1),
    }
    log(f"ingest ({name}): {result['images_per_s']} images/s ({result['images_per_s_wall']} over the wall time)")
    return result


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
            "variants": dict(args.variant),
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
        for name, settings in args.variant:
            load = partial(load_service, f"oceano-{name}", "app", {**env, **settings}, plan)
            result = run_part(report, f"oceano[{name}]", args.json, load)
            search.setdefault("variants", {})[name] = {"settings": settings, **(result or {})}
        if not args.skip_baseline:
            plain_env = {"PROVIDERS": args.providers}
            search["plain"] = run_part(
                report, "plain", args.json, lambda: load_service("plain", "bench.plain_insightface", plain_env, plan)
            )
            if search["oceano"] and search["plain"]:
                search["ratio"] = ratios(search["oceano"], search["plain"])
        if not args.skip_ingest:
            files = ingest_folder(photos, args, work)
            report["ingest"] = run_part(report, "ingest", args.json, lambda: run_ingest(files, env, args, work))
            for name, settings in args.variant:
                run = partial(run_ingest, files, {**env, **settings}, args, work, name)
                result = run_part(report, f"ingest[{name}]", args.json, run)
                report.setdefault("ingest_variants", {})[name] = {"settings": settings, **(result or {})}
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
