"""How the vector store holds up as a collection grows: load, stalls, query latency, recall, re-open, memory.

    nice -n 10 python -m bench.scale --points 100000
    nice -n 10 python -m bench.scale --points 100000 --set max_segment_points=50000 --set hnsw_m=24 --json

Builds a collection of N synthetic face-like 512-d unit vectors through `app.store.open_store`, with the
service's settings (plus any `--set NAME=VALUE` override of a Settings field): 50,000 identity centres per
million points, each point = 0.75 x its centre + noise, renormalised (points of one identity have cosine ~0.56,
like ArcFace embeddings of one person), upserted 1,000 at a time with payloads like the service writes.
Meanwhile a ticker thread wakes every 5 ms and records the longest stall of the process (an index build holds
the GIL), and a probe thread searches every 100 ms, as a user would during an ingest.

Then a fresh process re-opens the collection (timed, like a service restart), runs single-face searches for
held-out query vectors at each --ef (HNSW_EF by default), and reads its memory from /proc/self/smaps_rollup;
recall@10 is measured against exact numpy search over the same points (regenerated chunk by chunk, so this
process never holds them all).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.store import FacePoint, open_store
from bench.common import percentile_ms
from bench.scale_data import DIM, TOP, Data, point_index, point_uuid

PACK = "bench-scale:synthetic"


class Ticker(threading.Thread):
    """Wakes every `interval` seconds; the longest gap past the interval is how long the process stood still."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.longest = 0.0
        self.stalls_over_1s = 0
        self._halt = threading.Event()

    def run(self) -> None:
        last = time.perf_counter()
        while not self._halt.wait(self.interval):
            now = time.perf_counter()
            gap = now - last - self.interval
            self.longest = max(self.longest, gap)
            self.stalls_over_1s += gap > 1.0
            last = now

    def stop(self) -> None:
        self._halt.set()
        self.join()


class Probe(threading.Thread):
    """A user searching every `every` seconds during the load: what a search costs while ingest runs."""

    def __init__(self, store: Any, queries: np.ndarray, ef: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.store, self.queries, self.ef, self.every = store, queries, ef, every
        self.latencies: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self._halt.wait(self.every):
            started = time.perf_counter()
            self.store.search(self.queries[i % len(self.queries)][None], limit=TOP, threshold=None, hnsw_ef=self.ef)
            self.latencies.append(time.perf_counter() - started)
            i += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()


class BuildLog(logging.Handler):
    """Collects the index builds the store logs ("built the HNSW index of ... in N.Ns")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: list[float] = []
        self.cpu: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if match := re.search(r"built the HNSW index of .* in ([0-9.]+)s \(([0-9.]+)s CPU\)", record.getMessage()):
            self.seconds.append(float(match.group(1)))
            self.cpu.append(float(match.group(2)))


def bench_settings(path: Path, overrides: Mapping[str, Any]) -> Settings:
    return Settings(qdrant_path=path, collection_name="scale", qdrant_url="", min_free_disk_mb=0, **overrides)


def load(data: Data, settings: Settings, *, probe: bool) -> dict[str, Any]:
    builds = BuildLog()
    store_logger = logging.getLogger("app.store.edge")
    store_logger.addHandler(builds)
    store_logger.setLevel(logging.INFO)
    store_logger.propagate = False  # the builds are summed up, not printed one by one
    store = open_store(settings, dim=DIM, pack=PACK)
    ticker = Ticker()
    prober = Probe(store, data.queries(50), settings.hnsw_ef) if probe else None
    ticker.start()
    if prober:
        prober.start()
    started = time.perf_counter()
    for start, centre_ids, vectors in data.chunks():
        store.upsert(
            [
                FacePoint(
                    point_uuid(start + j),
                    v,
                    {
                        "file": f"/photos/{(start + j) // 3:07d}.jpg",
                        "face_index": (start + j) % 3,
                        "subject": f"person{c}",
                        "origin": "ingest",
                    },
                )
                for j, (c, v) in enumerate(zip(centre_ids, vectors, strict=True))
            ]
        )
    upserted = time.perf_counter() - started
    wait = getattr(store, "wait_indexed", None)
    if wait:
        wait()
    store.optimize()  # what an ingest job does at its end
    load_s = time.perf_counter() - started
    if prober:
        prober.stop()
    ticker.stop()
    info = store.info()
    closing = time.perf_counter()
    store.close()
    store_logger.removeHandler(builds)
    store_logger.propagate = True
    out: dict[str, Any] = {
        "load_s": round(load_s, 1),
        "upsert_s": round(upserted, 1),
        "rate": round(data.points / load_s),
        "stall_s": round(ticker.longest, 2),
        "stalls_over_1s": ticker.stalls_over_1s,
        "builds": len(builds.seconds),
        "build_max_s": round(max(builds.seconds, default=0.0), 2),
        "build_total_s": round(sum(builds.seconds), 1),
        "build_s": [round(b, 1) for b in builds.seconds],
        "build_cpu_s": [round(b, 1) for b in builds.cpu],
        "build_cpu_max_s": round(max(builds.cpu, default=0.0), 2),
        "loadavg": round(os.getloadavg()[0], 1),
        "indexed": info.indexed,
        "vectors": info.vectors,
        "close_s": round(time.perf_counter() - closing, 2),
    }
    if prober and prober.latencies:
        out.update(
            probe_p50_ms=round(percentile_ms(prober.latencies, 50), 1),
            probe_p99_ms=round(percentile_ms(prober.latencies, 99), 1),
            probe_max_ms=round(max(prober.latencies) * 1e3),
        )
    return out


def memory() -> dict[str, float]:
    """MB from /proc/self/smaps_rollup: PSS, anonymous (heap: not reclaimable), RSS."""
    fields: dict[str, float] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].rstrip(":") in ("Pss", "Anonymous", "Rss"):
            fields[parts[0].rstrip(":").lower()] = round(int(parts[1]) / 1024)
    return fields


def query_phase(path: Path, overrides: dict[str, str], points: int, n_queries: int, efs: list[int]) -> None:
    """Run in a fresh process: re-open, search, measure memory; prints JSON (ids per query per ef)."""
    data = Data(points)
    queries = data.queries(n_queries)
    del data
    settings = bench_settings(path, overrides)
    started = time.perf_counter()
    store = open_store(settings, dim=DIM, pack=PACK)
    open_s = time.perf_counter() - started
    for q in queries[:20]:  # warm-up
        store.search(q[None], limit=TOP, threshold=None, hnsw_ef=efs[0])
    per_ef = {}
    for ef in efs:
        latencies, cpu, ids = [], [], []
        for q in queries:
            t, c = time.perf_counter(), time.process_time()
            row = store.search(q[None], limit=TOP, threshold=None, hnsw_ef=ef)[0]
            latencies.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)  # all threads: on a busy machine, the work behind the wall time
            ids.append([point_index(m.id) for m in row])
        per_ef[str(ef)] = {
            "p50_ms": round(percentile_ms(latencies, 50), 2),
            "p95_ms": round(percentile_ms(latencies, 95), 2),
            "cpu_p50_ms": round(percentile_ms(cpu, 50), 2),
            "ids": ids,
        }
    result = {
        "open_s": round(open_s, 2),
        "memory_mb": memory(),
        "per_ef": per_ef,
        "query_loadavg": round(os.getloadavg()[0], 1),
        "segments": _segments(store),
    }
    store.close()
    print(json.dumps(result))


def _segments(store: Any) -> int | None:
    shard = getattr(store, "_shard", None)
    return int(shard.info().segments_count) if shard is not None else None


def disk_mb(path: Path) -> int:
    return round(sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20)


def run(
    points: int,
    overrides: dict[str, str],
    *,
    n_queries: int,
    efs: list[int],
    probe: bool,
    keep: Path | None,
    measure_only: bool = False,
) -> dict[str, Any]:
    """Build (unless measure_only: a collection --keep made earlier, e.g. since compacted), then measure."""
    tmp = keep or Path(tempfile.mkdtemp(prefix="oceano-scale-"))
    settings = bench_settings(tmp, overrides)
    efs = efs or [settings.hnsw_ef]
    data = Data(points)
    result: dict[str, Any] = {"points": points, "set": overrides, "hnsw_ef": settings.hnsw_ef}
    if not measure_only:
        result.update(load(data, settings, probe=probe))
    result["disk_mb"] = disk_mb(tmp / settings.collection_name)
    return measure(tmp, data, overrides, result, n_queries=n_queries, efs=efs, keep=keep is not None)


def measure(
    tmp: Path,
    data: Data,
    overrides: dict[str, str],
    result: dict[str, Any],
    *,
    n_queries: int,
    efs: list[int],
    keep: bool,
) -> dict[str, Any]:
    points = data.points
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scale",
            "--query-phase",
            str(tmp),
            "--points",
            str(points),
            "--queries",
            str(n_queries),
            "--ef",
            ",".join(map(str, efs)),
            "--overrides",
            json.dumps(overrides),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode:
        raise SystemExit(f"query phase failed:\n{child.stderr[-3000:]}")
    queried = json.loads(child.stdout.strip().splitlines()[-1])
    truth = data.exact_top(data.queries(n_queries))
    result.update(
        open_s=queried["open_s"],
        memory_mb=queried["memory_mb"],
        segments=queried["segments"],
        query_loadavg=queried["query_loadavg"],
    )
    result["per_ef"] = {}
    for ef, row in queried["per_ef"].items():
        hits = sum(len(set(found) & set(exact)) for found, exact in zip(row["ids"], truth.tolist(), strict=True))
        result["per_ef"][ef] = {
            "p50_ms": row["p50_ms"],
            "p95_ms": row["p95_ms"],
            "cpu_p50_ms": row["cpu_p50_ms"],
            "recall": round(hits / (TOP * n_queries), 4),
        }
    if not keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return result


def summary(r: dict[str, Any]) -> str:
    mem = r["memory_mb"]
    lines = []
    if "load_s" in r:
        lines += [
            f"machine load average at the end of the load: {r['loadavg']} ({os.cpu_count()} cores)",
            f"{r['points']:,} points {r['set'] or '(defaults)'}: load {r['load_s']}s ({r['rate']}/s), longest "
            f"stall {r['stall_s']}s ({r['builds']} builds, longest {r['build_max_s']}s, "
            f"{r['build_cpu_max_s']}s CPU), probe search p50/p99/max {r.get('probe_p50_ms')}/"
            f"{r.get('probe_p99_ms')}/{r.get('probe_max_ms')} ms",
        ]
    lines += [
        f"  re-open {r['open_s']}s, {r['segments']} segments, memory PSS {mem.get('pss')} MB, anonymous "
        f"{mem.get('anonymous')} MB, disk {r['disk_mb']} MB (load average {r['query_loadavg']})"
    ]
    for ef, row in r["per_ef"].items():
        lines.append(
            f"  ef {ef}: recall@10 {row['recall']:.3f}, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms "
            f"(CPU p50 {row['cpu_p50_ms']} ms)"
        )
    return "\n".join(lines)


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants NAME=VALUE, got {item!r}")
        out[name.strip().lower()] = value.strip()
    bench_settings(Path("."), out)  # a bad name or value stops here, before any work
    unknown = set(out) - set(Settings.model_fields)
    if unknown:
        raise SystemExit(f"not Settings fields: {', '.join(sorted(unknown))}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300, help="held-out queries for latency and recall")
    parser.add_argument("--ef", default="", help="comma-separated hnsw_ef values to query at (default: HNSW_EF)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a Settings field (max_segment_points=50000, hnsw_m=24, quantization=turbo4)",
    )
    parser.add_argument("--no-probe", action="store_true", help="no searches during the load")
    parser.add_argument("--keep", type=Path, help="build the collection here and keep it")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="with --keep: only re-open and measure a collection built earlier (e.g. compacted)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (for bench.scale_sweep)")
    parser.add_argument("--query-phase", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    efs = [int(x) for x in args.ef.split(",") if x.strip()]
    if args.query_phase:
        query_phase(args.query_phase, json.loads(args.overrides), args.points, args.queries, efs)
        return 0
    if args.measure and not args.keep:
        parser.error("--measure needs --keep DIR")
    result = run(
        args.points,
        parse_sets(args.set),
        n_queries=args.queries,
        efs=efs,
        probe=not args.no_probe,
        keep=args.keep,
        measure_only=args.measure,
    )
    print(json.dumps(result) if args.json else summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
