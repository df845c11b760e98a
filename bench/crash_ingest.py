"""Crash test of `python -m app.ingest`: SIGKILL at random moments, resume, compare with a clean run.

    python -m bench.crash_ingest [--copies 6] [--kills 3] [--batch 64] [--seed N]

1. Qdrant Edge WAL check: a child process upserts points without flush() and is SIGKILLed; the shard is reopened
   and counted: every point must be there (an upsert is durable once update() returns).
2. A folder of a few hundred face photos: the eval photos (../shared/eval/faces-a) replicated `--copies` times
   under other names and bytes.
3. Clean run: the command runs to the end in STATE_DIR A.
4. Crash run in STATE_DIR B: the command is started and SIGKILLed `--kills` times, then run to the end. Each kill
   moment is drawn uniformly between 10% and 60% of the time the rest of the work should take at the clean run's
   pace (after model loading), with two guards read from the state while the command runs: never before this run
   has committed a batch (so each kill follows new progress), and at once when this run has done 75% of what was
   left (so a machine faster than during the clean run cannot finish first). At least one kill must land mid-run:
   after it the state records some but not all files done (0 < done < total). At each kill the state must not be
   ahead of the store: for every file recorded done (or no face), the points whose payload `file` is that file
   (a filtered scroll) must be exactly the recorded number of faces, with the ids derived from its content hash.
5. The collections must hold exactly the same point ids (and payload files, and thumbnails), and the state of
   B must say every file done, as in A. Exit status 1 when any check fails.
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from app.ingest.model import STATE_FILE, FileRecord, FileStatus
from app.ingest.state import IngestState
from app.store import CollectionSpec, EdgeStore, FacePoint, point_id
from bench.common import REPO, free_port, setup_logging
from bench.photos import make_photo_folder

WORK_STARTED = b"inference workers"  # in the line app.jobs logs when a run starts
FINISHED = (FileStatus.DONE, FileStatus.NO_FACE)  # a file in either state is not processed again

# ------------------------------------------------------------------------------------------------- WAL check


def wal_child(path: Path, n: int) -> None:
    store = EdgeStore(path, CollectionSpec(name="faces", dim=512, pack="wal-check"))
    rng = np.random.default_rng(0)
    for start in range(0, n, 500):
        vectors = rng.standard_normal((500, 512)).astype(np.float32)
        store.upsert(
            [FacePoint(point_id(f"wal{start + i}", 0), vectors[i], {"file": f"/wal/{start + i}"}) for i in range(500)]
        )
    print("upserted", flush=True)
    time.sleep(600)  # killed here, flush() never called


def wal_check(tmp: Path, n: int) -> tuple[int, int]:
    path = tmp / "wal" / "faces"
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.crash_ingest", "--wal-child", str(path), str(n)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
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
    return {
        **os.environ,
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(state / "qdrant"),
        "THUMBS_DIR": str(state / "thumbs"),
        "PORT": str(port),
        "LOG_LEVEL": "info",
    }


def start(folder: Path, state: Path, batch: int, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.ingest", "--path", str(folder), "--batch", str(batch)],
            cwd=REPO,
            env=command_env(state, port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


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


def finished_files(records: dict[str, FileRecord]) -> int:
    return sum(r.status in FINISHED for r in records.values())


class StateWatch:
    """The number of files the running command has recorded finished, read from its state as it runs (SQLite in
    WAL mode: reading never blocks the writer). Opened once the command has created the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: IngestState | None = None

    def finished(self) -> int:
        if self.db is None:
            if not self.path.exists():
                return 0
            self.db = IngestState(self.path)
        counts = self.db.file_counts()
        return sum(counts.get(status.value, 0) for status in FINISHED)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def points_per_file(state: Path, files: Iterable[str]) -> dict[str, set[str]]:
    """file -> ids of the points whose payload `file` is that file: one filtered scroll per file, on the shard
    reopened after the command has ended."""
    from qdrant_edge import EdgeShard, FieldCondition, Filter, MatchValue, ScrollRequest

    path = state / "qdrant" / "faces"
    if not path.exists():
        return {file: set() for file in files}
    shard = EdgeShard.load(str(path))
    out: dict[str, set[str]] = {}
    try:
        for file in files:
            flt = Filter(must=[FieldCondition(key="file", match=MatchValue(file))])
            ids: set[str] = set()
            offset = None
            while True:
                records, offset = shard.scroll(
                    ScrollRequest(offset=offset, limit=1000, filter=flt, with_payload=False, with_vector=False)
                )
                ids.update(str(r.id) for r in records)
                if offset is None:
                    break
            out[file] = ids
    finally:
        shard.close()
    return out


def state_ahead_of_store(state: Path, records: dict[str, FileRecord]) -> list[str]:
    """Files recorded finished whose points in the store are not exactly their recorded faces: other count, or
    other ids than point_id(content hash, 0..faces-1)."""
    finished = {p: r for p, r in records.items() if r.status in FINISHED}
    stored = points_per_file(state, finished)
    return [
        p
        for p, r in finished.items()
        if len(stored[p]) != r.faces or stored[p] != {point_id(r.content_hash or "", i) for i in range(r.faces)}
    ]


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
        total = len(files)
        print(f"folder: {total} files; --batch {args.batch}; seed {seed}")

        clean, crash = tmp / "clean", tmp / "crash"
        started = time.monotonic()
        proc = start(folder, clean, args.batch, port, tmp / "clean.log")
        startup = wait_for_work(proc, tmp / "clean.log", 0) or 0.0
        proc.wait()
        clean_time = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"the clean run failed ({proc.returncode}):\n{(tmp / 'clean.log').read_text()[-3000:]}")
        work_time = max(clean_time - startup, 1e-3)
        print(f"clean run: {clean_time:.1f}s ({startup:.1f}s to start, then {total / work_time:.1f} files/s)")

        invariant_ok = True
        mid_run_kills = 0
        for kill in range(1, args.kills + 1):
            before = finished_files(state_records(crash))
            remaining = total - before
            if remaining == 0:
                print(f"kill {kill}: nothing left to do (every file recorded done)")
                break
            # a moment anywhere in the middle of what is left, at the clean run's pace (a resumed run first skips
            # the files already done); the guards below keep it after new progress and before the end
            offset = rng.uniform(0.1, 0.6) * work_time * remaining / total
            enough = before + max(1, int(0.75 * remaining))
            log = tmp / "crash.log"
            log_size = log.stat().st_size if log.exists() else 0
            started = time.monotonic()
            proc = start(folder, crash, args.batch, port, log)
            to_work = wait_for_work(proc, log, log_size)
            if to_work is None:
                raise SystemExit(f"the command did not start:\n{log.read_text()[-3000:]}")
            watch = StateWatch(crash / STATE_FILE)
            work_started = time.monotonic()
            why = "at the drawn moment"
            try:
                while proc.poll() is None:
                    done_now = watch.finished()
                    if time.monotonic() - work_started >= offset:
                        if done_now > before:
                            break
                        why = f"after the first commit of this run (drawn moment {offset:.1f}s came before it)"
                    elif done_now >= enough:
                        why = f"early: 75% of the remaining files done before the drawn moment ({offset:.1f}s)"
                        break
                    time.sleep(0.02)
            finally:
                watch.close()
            moment = time.monotonic() - started
            if proc.poll() is not None:
                print(f"kill {kill}: the command finished before the kill ({moment:.1f}s)")
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            records = state_records(crash)
            done = finished_files(records)
            mid_run = 0 < done < total
            mid_run_kills += mid_run
            ahead = state_ahead_of_store(crash, records)
            invariant_ok = invariant_ok and not ahead
            points = collection(crash) if (crash / "qdrant" / "faces").exists() else {}
            print(
                f"kill {kill}: SIGKILL {moment:.1f}s after start ({moment - to_work:.1f}s into the work, {why}): "
                f"{done}/{total} files recorded done ({sum(r.faces for r in records.values())} faces), "
                f"{'mid-run' if mid_run else 'NOT mid-run'}; {len(points)} points in the collection; files "
                f"recorded done whose points in the store are not exactly their recorded faces: {len(ahead)}"
            )
            for path in ahead[:5]:
                print(f"    {path}: {records[path].faces} faces recorded")

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
            p: (r.status, r.faces, r.content_hash) for p, r in rb.items()
        }
        checks = {
            f"Qdrant Edge WAL: all {upserted} points upserted without flush() were there after SIGKILL": (
                survived == upserted
            ),
            "at least one SIGKILL landed mid-run (0 < files recorded done < total)": mid_run_kills > 0,
            "same point ids": set(a) == set(b),
            "same file for every point": a == b,
            "same thumbnails": thumbs_a == thumbs_b == set(a),
            "every file recorded, none failed": len(rb) == len(files) and "failed" not in statuses_b,
            "same per-file state (status, faces, sha256)": same_records,
            "points = faces recorded": len(b) == sum(r.faces for r in rb.values()),
            "at every kill, each file recorded done had exactly its recorded faces in the store": invariant_ok,
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
