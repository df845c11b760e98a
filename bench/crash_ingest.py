"""Crash test of `python -m app.ingest`: SIGKILL at random moments, resume, compare with a clean run.

    python -m bench.crash_ingest [--copies 6] [--kills 3] [--batch 64] [--seed N]

1. Qdrant Edge WAL check: a child process upserts points without flush() and is SIGKILLed; the shard is reopened
   and counted (is an upsert durable once update() returns?).
2. A folder of a few hundred face photos: the eval photos (../shared/eval/faces-a) replicated `--copies` times
   under other names and bytes.
3. Clean run: the command runs to the end in STATE_DIR A.
4. Crash run in STATE_DIR B: the command is started and SIGKILLed at a random moment, `--kills` times (each
   moment drawn uniformly over the first half of the time the rest of the work should take, after model
   loading), then run to the end. At each kill the state must not be ahead of the store: every file recorded
   done has all its points in the collection.
5. The collections must hold exactly the same point ids (and payload files, and thumbnails), and the state of
   B must say every file done, as in A. Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.ingest.model import STATE_FILE, FileRecord
from app.ingest.state import IngestState
from app.store import CollectionSpec, EdgeStore, FacePoint, point_id
from bench.common import REPO, setup_logging
from bench.photos import make_photo_folder

WORK_STARTED = b"inference workers"  # in the line app.jobs logs when a run starts

# ------------------------------------------------------------------------------------------------- WAL check


def wal_child(path: Path, n: int) -> None:
    store = EdgeStore(path, CollectionSpec(name="faces", dim=512, pack="wal-check"))
    rng = np.random.default_rng(0)
    for start in range(0, n, 500):
        vectors = rng.standard_normal((500, 512)).astype(np.float32)
        store.upsert([FacePoint(point_id(f"wal{start + i}", 0), vectors[i], {"file": f"/wal/{start + i}"})
                      for i in range(500)])
    print("upserted", flush=True)
    time.sleep(600)  # killed here, flush() never called


def wal_check(tmp: Path, n: int) -> tuple[int, int]:
    path = tmp / "wal" / "faces"
    child = subprocess.Popen([sys.executable, "-m", "bench.crash_ingest", "--wal-child", str(path), str(n)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait()
    if line != "upserted":
        raise SystemExit("the WAL check child failed")
    store = EdgeStore(path, CollectionSpec(name="faces", dim=512, pack="wal-check"))
    count = store.count()
    store.close()
    return n, count


# ------------------------------------------------------------------------------------------------- runs


def command_env(state: Path, port: int) -> dict[str, str]:
    return {**os.environ, "STATE_DIR": str(state), "QDRANT_PATH": str(state / "qdrant"),
            "THUMBS_DIR": str(state / "thumbs"), "PORT": str(port), "LOG_LEVEL": "info"}


def start(folder: Path, state: Path, batch: int, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "app.ingest", "--path", str(folder), "--batch", str(batch)],
                                cwd=REPO, env=command_env(state, port), stdout=out, stderr=subprocess.STDOUT)


def wait_for_work(proc: subprocess.Popen[bytes], log: Path, offset: int, timeout: float = 120.0) -> float | None:
    """Seconds until the command logs the start of its run (models loaded, store open); None if it ended."""
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < timeout:
        if WORK_STARTED in log.read_bytes()[offset:]:
            return time.monotonic() - started
        time.sleep(0.01)
    return None


def state_records(state: Path) -> dict[str, FileRecord]:
    if not (state / STATE_FILE).exists():
        return {}
    db = IngestState(state / STATE_FILE)
    try:
        return {r.path: r for r in db.files()}
    finally:
        db.close()


def collection(state: Path) -> dict[str, Any]:
    """point id -> payload file, read from the shard after the command has ended."""
    from qdrant_edge import EdgeShard, ScrollRequest

    shard = EdgeShard.load(str(state / "qdrant" / "faces"))
    out: dict[str, Any] = {}
    offset = None
    while True:
        records, offset = shard.scroll(ScrollRequest(offset=offset, limit=1000, with_payload=True, with_vector=False))
        out.update({str(r.id): dict(r.payload or {}).get("file") for r in records})
        if offset is None:
            break
    shard.close()
    return out


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=6, help="versions of each eval photo (default 6: 378 files)")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="the command's --batch (points per upsert)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--wal-child", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wal_child:
        wal_child(Path(args.wal_child[0]), int(args.wal_child[1]))
        return
    setup_logging()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    port = free_port()  # nothing answers there: the command runs in-process

    with tempfile.TemporaryDirectory(prefix="oceano-crash-") as tmp_name:
        tmp = Path(tmp_name)
        upserted, survived = wal_check(tmp, 25_000)
        print(f"Qdrant Edge WAL: {upserted} points upserted without flush(), SIGKILL, reopened: {survived} points")

        folder = tmp / "photos"
        files = make_photo_folder(folder, copies=args.copies)
        print(f"folder: {len(files)} files; --batch {args.batch}; seed {seed}")

        clean, crash = tmp / "clean", tmp / "crash"
        started = time.monotonic()
        proc = start(folder, clean, args.batch, port, tmp / "clean.log")
        startup = wait_for_work(proc, tmp / "clean.log", 0) or 0.0
        proc.wait()
        clean_time = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"the clean run failed ({proc.returncode}):\n{(tmp / 'clean.log').read_text()[-3000:]}")
        work_time = max(clean_time - startup, 1e-3)
        print(f"clean run: {clean_time:.1f}s ({startup:.1f}s to start, then {len(files) / work_time:.1f} files/s)")

        invariant_ok = True
        for kill in range(1, args.kills + 1):
            remaining = len(files) - len(state_records(crash))
            # anywhere in the middle of what is left: late enough that batches were committed since the last kill
            # (a resumed run first skips the files already done), early enough that work is in flight
            offset = rng.uniform(0.25, 0.9) * work_time * remaining / len(files)
            log = tmp / "crash.log"
            log_size = log.stat().st_size if log.exists() else 0
            started = time.monotonic()
            proc = start(folder, crash, args.batch, port, log)
            to_work = wait_for_work(proc, log, log_size)
            if to_work is None:
                raise SystemExit(f"the command did not start:\n{log.read_text()[-3000:]}")
            time.sleep(offset)
            moment = time.monotonic() - started
            if proc.poll() is not None:
                print(f"kill {kill}: the command finished before the kill moment ({moment:.1f}s)")
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            records = state_records(crash)
            points = collection(crash) if (crash / "qdrant" / "faces").exists() else {}
            per_file: dict[str, int] = {}
            for file in points.values():
                per_file[file] = per_file.get(file, 0) + 1
            behind = [p for p, r in records.items() if per_file.get(p, 0) != r.faces]
            invariant_ok = invariant_ok and not behind
            print(f"kill {kill}: SIGKILL after {moment:.1f}s: {len(records)}/{len(files)} files recorded done "
                  f"({sum(r.faces for r in records.values())} faces), {len(points)} points in the collection; "
                  f"files recorded done without all their points: {len(behind)}")

        started = time.monotonic()
        proc = start(folder, crash, args.batch, port, tmp / "crash.log")
        proc.wait()
        print(f"final resume: {time.monotonic() - started:.1f}s, exit status {proc.returncode}")
        if proc.returncode != 0:
            raise SystemExit(f"the resumed run failed:\n{(tmp / 'crash.log').read_text()[-3000:]}")

        a, b = collection(clean), collection(crash)
        ra, rb = state_records(clean), state_records(crash)
        thumbs_a = {p.stem for p in (clean / "thumbs").glob("*/*.jpg")}
        thumbs_b = {p.stem for p in (crash / "thumbs").glob("*/*.jpg")}
        statuses_a = {s.value: sum(r.status == s for r in ra.values()) for s in {r.status for r in ra.values()}}
        statuses_b = {s.value: sum(r.status == s for r in rb.values()) for s in {r.status for r in rb.values()}}
        same_records = {p: (r.status, r.faces, r.content_hash) for p, r in ra.items()} == {
            p: (r.status, r.faces, r.content_hash) for p, r in rb.items()}
        checks = {
            "same point ids": set(a) == set(b),
            "same file for every point": a == b,
            "same thumbnails": thumbs_a == thumbs_b == set(a),
            "every file recorded, none failed": len(rb) == len(files) and "failed" not in statuses_b,
            "same per-file state (status, faces, sha256)": same_records,
            "points = faces recorded": len(b) == sum(r.faces for r in rb.values()),
            "at every kill, the state was never ahead of the store": invariant_ok,
        }
        print(f"clean run:   {len(a)} points, {len(thumbs_a)} thumbnails, state {statuses_a}")
        print(f"crash+resume: {len(b)} points, {len(thumbs_b)} thumbnails, state {statuses_b}")
        for name, ok in checks.items():
            print(f"  {'OK  ' if ok else 'FAIL'} {name}")
        if not all(checks.values()):
            missing, extra = set(a) - set(b), set(b) - set(a)
            print(f"missing {len(missing)} points, {len(extra)} extra")
            sys.exit(1)


if __name__ == "__main__":
    main()
