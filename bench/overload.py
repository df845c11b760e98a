"""Overload against the real service: is it shed fast (503 with Retry-After) while the searches it takes keep
their latency and throughput?

Starts `python -m app` (GPU_ACQUIRE_TIMEOUT=2, other settings default) on a free port with its state in a
temporary folder, indexes a few eval photos, then runs closed-loop clients (keep-alive connections on asyncio
streams, a request encoded once): each POSTs /api/search with the same one-face 640 px JPEG, waits for the answer,
and sends the next at once (no pause, Retry-After is not honoured:
the worst case for the service). One run per level (default 50 and 200 clients, 30 s each, after a short warm-up
that is not counted). Every answer that arrives within the window is recorded: status, latency, Retry-After
presence; throughput is answers 200 per second of the window.

Printed per level: answers by status, 200 p50/p95 latency, 503 p50/p95 latency, 503s without Retry-After, other
answers, 200-throughput (answers 200 per second of the window), the CPU seconds the service and this load
generator spent (they share the machine), the share of 503s answered within 500 ms, how late the service's event
loop answers (a 404 every 0.5 s from a process of its own: routing only, no thread, no engine), how late the load
generator's own event loop was (added to every latency it measures), and the machine's load average. Goals, printed
PASS/FAIL beside the figures: at the highest level only 200s and 503s with Retry-After; 503 p95 <= 500 ms; 200 p95
<= 3 s; 200-throughput at the highest level >= 0.8 x that at the lowest.

--compare-ref REF (e.g. e362951, before admission control) adds a throughput comparison at 50 clients: a detached
git worktree of REF in a temporary folder, and the service started from REF's tree and from this tree in turn
(REF, current, REF, current ...: `--rounds` each, `--compare-duration` s each), each on fresh state with the same
settings and the same photos; the printed ratio is current / REF (goal: current >= REF within the noise, the
spread between rounds of one tree). The worktree is removed at the end.

--standin runs every service on the stand-in engine (ENGINE_STANDIN=1, app.engine.runtime.ReplaySession):
inference then costs next to nothing, and the searches/s reached is the ceiling a GPU machine meets.

    python -m bench.overload [--duration 30] [--levels 50,200] [--compare-ref e362951 --rounds 2] [--standin]
                             [--env WORKERS=2 --env ENGINE_STANDIN_LAYOUT=gpu]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection as Connection_
from pathlib import Path

import cv2
import httpx

from bench.common import EVAL_DIR, Photos, key_value, read_bgr
from bench.live import REPO, Server, app_package_file, live_server, server_env
from bench.load_client import closed_loop, cpu_seconds, own_cpu_seconds
from bench.overload_report import (
    Level,
    ms,
    print_levels,
    verdict,
)

logger = logging.getLogger("bench.overload")

DEFAULT_PHOTO = EVAL_DIR / "img1.jpg"
INDEX_PHOTOS = ("img2.jpg", "img3.jpg", "img4.jpg", "img5.jpg", "img6.jpg", "img7.jpg")


# ------------------------------------------------------------------------------------------------ photos
def jpeg_long_side(path: Path, side: int, quality: int = 90) -> bytes:
    image = read_bgr(path)
    scale = side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SystemExit(f"cannot encode {path}")
    return buf.tobytes()


def query_photo(path: Path | None) -> tuple[str, bytes]:
    if path is None:
        path = DEFAULT_PHOTO if DEFAULT_PHOTO.is_file() else Photos.yaoming
    return path.name, jpeg_long_side(path, 640)


def index_photos() -> list[tuple[str, bytes]]:
    """A few photos to index (the eval set's when present, else the wheel's), 800 px long side."""
    paths = [EVAL_DIR / name for name in INDEX_PHOTOS if (EVAL_DIR / name).is_file()] or [Photos.t1, Photos.players]
    return [(p.name, jpeg_long_side(p, 800)) for p in paths]


def prepare(
    server: Server, query: bytes, photos: list[tuple[str, bytes]], busy_retry_s: float = 0.0, warm_batches: int = 0
) -> int:
    """Index the photos, then search the query a few times (warm-up); returns the faces found in the query.
    busy_retry_s: for that long in all, a 503 is retried after its Retry-After (at most 5 s) instead of failing (a
    cold GPU engine sheds while each new input shape costs seconds). warm_batches: also search 1, 2, ... that many
    copies of the query in one request each, so that every engine batch size the load can make has run once before
    counting (the stand-in engine runs each new input shape for real once: unwarmed, those runs would be counted
    in the ceiling)."""
    deadline = time.monotonic() + busy_retry_s

    def post(http: httpx.Client, path: str, name: str, data: bytes, form: dict[str, str]) -> httpx.Response:
        while True:
            r = http.post(path, files={"file": (name, data, "image/jpeg")}, data=form)
            if r.status_code != 503 or time.monotonic() >= deadline:
                return r
            time.sleep(min(5.0, float(r.headers.get("retry-after") or 1)))

    with httpx.Client(base_url=server.base_url, timeout=300) as http:
        for copies in range(1, warm_batches + 1):
            files = [("files", (f"q{i}.jpg", query, "image/jpeg")) for i in range(copies)]
            r = http.post("/api/search/batch", files=files)
            if r.status_code != 200:
                raise SystemExit(f"warm-up batch of {copies} answered {r.status_code}: {r.text[:300]}")
        for name, data in photos:
            r = post(http, "/api/faces", name, data, {"subject": name})
            if r.status_code != 201:
                raise SystemExit(f"indexing {name} answered {r.status_code}: {r.text[:300]}")
        faces = -1
        for _ in range(3):
            r = post(http, "/api/search", "query.jpg", query, {})
            if r.status_code != 200:
                raise SystemExit(f"warm-up search answered {r.status_code}: {r.text[:300]}")
            faces = len(r.json()["faces"])
    return faces


# ------------------------------------------------------------------------------------------------ load
def probe_service(base_url: str, warmup: float, duration: float, out: Connection_) -> None:
    """In a process of its own (so that the load generator's own delays do not count): GET a path that no route
    serves every 0.5 s during the window and send back the seconds each 404 took. The 404 is answered on the
    service's event loop (routing only: no thread, no engine), so this is how late that loop is."""
    delays: list[float] = []
    time.sleep(warmup)
    end = time.monotonic() + duration
    with httpx.Client(base_url=base_url, timeout=60) as http:
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                http.get("/__overload_probe__")
            except httpx.HTTPError:
                pass
            delays.append(time.perf_counter() - started)
            time.sleep(0.5)
    out.send(delays)
    out.close()


def settle(server: Server, seconds: float = 30.0) -> None:
    """Wait (bounded) until the service has no inference running or waiting."""
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        while time.monotonic() < deadline:
            try:
                body = http.get("/status").json()
                if not body.get("inference_in_use") and not body.get("inference_waiting"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)


def run_level(
    server: Server, name: str, query: bytes, clients: int, args: argparse.Namespace, duration: float
) -> Level:
    settle(server)
    level = Level(name, clients, duration)
    logger.info("%s: %d clients, %.0f s warm-up + %.0f s", name, clients, args.warmup, duration)
    server_cpu, client_cpu, load = cpu_seconds(server.pid), own_cpu_seconds(), os.getloadavg()[0]
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    probe = context.Process(target=probe_service, args=(server.base_url, args.warmup, duration, sender), daemon=True)
    probe.start()
    level.answers, level.generator_late = asyncio.run(
        closed_loop(server.base_url, query, clients, args.warmup, duration, args.timeout, args.honor_retry_after)
    )
    if receiver.poll(60):
        level.loop_delays = receiver.recv()
    probe.join(10)
    level.server_cpu_s = cpu_seconds(server.pid) - server_cpu
    level.client_cpu_s = own_cpu_seconds() - client_cpu
    level.load = (load, os.getloadavg()[0])
    logger.info("  %s", dict(level.statuses()))
    return level


# ------------------------------------------------------------------------------------------------ compare
def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def compare(
    ref: str, query: bytes, photos: list[tuple[str, bytes]], env: Mapping[str, str], args: argparse.Namespace
) -> None:
    sha = git("rev-parse", "--short", f"{ref}^{{commit}}")
    head = git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    with tempfile.TemporaryDirectory(prefix="oceano-overload-ref-") as tmp:
        ref_dir = Path(tmp) / f"ref-{sha}"
        git("worktree", "add", "--detach", str(ref_dir), sha)
        try:
            current = args.app_dir.resolve()
            label = f"current {head}{dirty}" if current == REPO else f"current {current}"
            trees = [(f"REF {sha}", ref_dir), (label, current)]
            for label, tree in trees:
                imported = app_package_file(tree, server_env(tree, Path(tmp) / "probe", env))
                where = "its own" if Path(imported).resolve().is_relative_to(tree.resolve()) else "NOT its own"
                print(f"{label}: `python -m app` from {tree} imports {imported} ({where})")
                if where != "its own":
                    raise SystemExit(f"{label}: the service would not run the tree under test")
            runs: dict[str, list[float]] = {label: [] for label, _ in trees}
            # The service's CPU per answer: far less swayed by other load on the machine than answers per second.
            cpu_ms: dict[str, list[float]] = {label: [] for label, _ in trees}
            for round_ in range(args.rounds):
                for label, tree in trees:
                    with live_server(tree, env=env, prefix="oceano-overload-") as server:
                        prepare(server, query, photos, warm_batches=args.warm_batches)
                        level = run_level(
                            server,
                            f"round {round_ + 1} {label}",
                            query,
                            args.compare_clients,
                            args,
                            args.compare_duration,
                        )
                    st = level.statuses()
                    runs[label].append(level.throughput)
                    cpu_ms[label].append(level.server_cpu_s * 1e3 / max(1, len(level.answers)))
                    print(
                        f"round {round_ + 1}  {label:<40} 200/s {level.throughput:6.1f}  "
                        f"service CPU {cpu_ms[label][-1]:.2f} ms per answer  "
                        f"({', '.join(f'{k} x{v}' for k, v in sorted(st.items()))}; 200 p50 "
                        f"{ms(level.p('200', 50))} ms, p95 {ms(level.p('200', 95))} ms; load average "
                        f"{level.load[0]:.1f} -> {level.load[1]:.1f})"
                    )
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(ref_dir)],
                capture_output=True,
                timeout=120,
            )
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True, timeout=120)
    (ref_label, _), (cur_label, _) = trees
    ref_runs, cur_runs = runs[ref_label], runs[cur_label]
    ref_mean, cur_mean = statistics.fmean(ref_runs), statistics.fmean(cur_runs)
    # Noise: the largest spread between rounds of one tree, relative to its mean.
    noise = max((max(r) - min(r)) / statistics.fmean(r) if statistics.fmean(r) else 0.0 for r in (ref_runs, cur_runs))
    ratio = cur_mean / ref_mean if ref_mean else float("inf")
    print(
        f"search throughput at {args.compare_clients} clients, {args.rounds} alternated rounds of "
        f"{args.compare_duration:.0f} s each (answers 200 per second)"
    )
    print(f"  {ref_label:<40} {' '.join(f'{v:6.1f}' for v in ref_runs)}   mean {ref_mean:6.1f}")
    print(f"  {cur_label:<40} {' '.join(f'{v:6.1f}' for v in cur_runs)}   mean {cur_mean:6.1f}")
    print(f"  ratio current / REF {ratio:.2f}; noise (largest spread between rounds of one tree) {noise:.0%}")
    print(f"  {verdict(ratio >= 1 - noise)}  current >= REF within noise ({ratio:.2f} >= {1 - noise:.2f})")
    ref_cpu, cur_cpu = statistics.fmean(cpu_ms[ref_label]), statistics.fmean(cpu_ms[cur_label])
    print(
        f"service CPU ms per answer (any status): REF {' '.join(f'{v:.2f}' for v in cpu_ms[ref_label])} mean "
        f"{ref_cpu:.2f}; current {' '.join(f'{v:.2f}' for v in cpu_ms[cur_label])} mean {cur_cpu:.2f}; answers per "
        f"CPU second current / REF {ref_cpu / cur_cpu if cur_cpu else float('inf'):.2f}"
    )


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds counted per level (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before counting (default 3)")
    parser.add_argument("--levels", default="50,200", help="client counts, lowest first (default 50,200)")
    parser.add_argument("--skip-levels", action="store_true", help="only the --compare-ref comparison")
    parser.add_argument("--acquire-timeout", type=float, default=2.0, help="GPU_ACQUIRE_TIMEOUT (default 2)")
    parser.add_argument(
        "--photo",
        type=Path,
        help="query photo, resized to 640 px long side (default: the eval "
        "set's img1.jpg, else the wheel's yaoming.jpg)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="client seconds per request (default 60)")
    parser.add_argument(
        "--honor-retry-after",
        action="store_true",
        help="clients wait what Retry-After says after a 503 (default: they send again at once)",
    )
    parser.add_argument("--compare-ref", metavar="REF", help="also compare search throughput with this commit")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds per tree (default 2)")
    parser.add_argument("--compare-duration", type=float, default=20.0, help="seconds per compare run (default 20)")
    parser.add_argument("--compare-clients", type=int, default=50, help="clients for the comparison (default 50)")
    parser.add_argument(
        "--app-dir", type=Path, default=REPO, help="checkout whose `app` is run as the current tree (default: this one)"
    )
    parser.add_argument(
        "--standin",
        action="store_true",
        help="run the service on the stand-in engine (ENGINE_STANDIN=1: ONNX outputs recorded once per input shape "
        "and replayed): the searches/s it reaches is the ceiling set by everything but inference",
    )
    parser.add_argument(
        "--warm-batches",
        type=int,
        help="before counting, search 1..N copies of the query in one request each, so that every engine batch "
        "size has run once (default: REQUEST_BATCH's default, 32, with --standin; else 0)",
    )
    parser.add_argument(
        "--env",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every service started (both trees of --compare-ref), e.g. WORKERS=2 or "
        "ENGINE_STANDIN_LAYOUT=gpu; repeatable",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    levels_n = [int(v) for v in args.levels.split(",") if v.strip()]
    if (
        not levels_n
        or any(n < 1 or n > 1000 for n in levels_n)
        or not 1 <= args.duration <= 600
        or not 1 <= args.rounds <= 10
        or not 1 <= args.compare_duration <= 600
    ):
        parser.error("levels 1..1000 clients, duration 1..600 s, rounds 1..10")

    if args.warm_batches is None:
        args.warm_batches = 32 if args.standin else 0
    name, query = query_photo(args.photo)
    photos = index_photos()
    env = {"GPU_ACQUIRE_TIMEOUT": str(args.acquire_timeout)}
    env.update(args.env)
    if args.standin:
        env["ENGINE_STANDIN"] = "1"
        print(
            "STAND-IN ENGINE (ENGINE_STANDIN=1): inference answers recorded outputs at once; the figures below are "
            "the ceiling set by HTTP, decoding, pre/post-processing and search, not a real service's"
        )
    if not args.skip_levels:
        with live_server(args.app_dir, env=env, prefix="oceano-overload-") as server:
            faces = prepare(server, query, photos, warm_batches=args.warm_batches)
            print(
                f"query: {name} at 640 px ({len(query) / 1024:.0f} KB), {faces} face(s) found; "
                f"{len(photos)} photos indexed"
            )
            levels = [run_level(server, f"{n} clients", query, n, args, args.duration) for n in levels_n]
        print_levels(levels, args.acquire_timeout, args.honor_retry_after)
    if args.compare_ref:
        compare(args.compare_ref, query, photos, env, args)


if __name__ == "__main__":
    main()
