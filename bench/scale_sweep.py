"""Sweep the store's levers with bench.scale: each combination in its own process, one table at the end.

    nice -n 10 python -m bench.scale_sweep --points 100000 --ef 64,128,256 \\
        --grid max_segment_points=25000,50000 --grid hnsw_m=16,24 --out sweep-100k.jsonl

Every --grid NAME=V1,V2 adds a Settings field to the product of combinations; --case NAME=V,NAME=V adds one
combination by hand (repeatable; with no --grid only the cases run). Rows are appended to --out as JSON lines
as they finish (the curves are kept; a crashed sweep loses only the running case).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def combinations(grid: list[str], cases: list[str]) -> list[dict[str, str]]:
    axes = []
    for item in grid:
        name, _, values = item.partition("=")
        axes.append([(name.strip(), v.strip()) for v in values.split(",") if v.strip()])
    combos = [dict(c) for c in itertools.product(*axes)] if axes else []
    for case in cases:
        combos.append(dict(kv.split("=", 1) for kv in case.split(",") if kv.strip()))
    return combos or [{}]


def run_case(points: int, overrides: dict[str, str], ef: str, queries: int, probe: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scale", "--points", str(points), "--json", "--queries", str(queries)]
    cmd += ["--ef", ef] if ef else []
    cmd += [] if probe else ["--no-probe"]
    for name, value in overrides.items():
        cmd += ["--set", f"{name}={value}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"points": points, "set": overrides, "error": proc.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| points | settings | load s | stall s (build CPU s) | builds | re-open s | anon MB | PSS MB | disk MB "
        "| segments | load avg | ef: recall@10 / p50 ms / p95 ms / CPU p50 ms |"
    )
    out = [head, "|" + "---|" * 12]
    for r in rows:
        cfg = " ".join(f"{k}={v}" for k, v in r["set"].items()) or "defaults"
        if "error" in r:
            out.append(f"| {r['points']:,} | {cfg} | failed: {r['error']} |||||||||")
            continue
        efs = "; ".join(
            f"{ef}: {v['recall']:.3f} / {v['p50_ms']} / {v['p95_ms']} / {v.get('cpu_p50_ms', '-')}"
            for ef, v in r["per_ef"].items()
        )
        mem = r["memory_mb"]
        out.append(
            f"| {r['points']:,} | {cfg} | {r['load_s']} | {r['stall_s']} ({r.get('build_cpu_max_s', '-')}) "
            f"| {r['builds']} | {r['open_s']} | {mem.get('anonymous')} | {mem.get('pss')} | {r['disk_mb']} "
            f"| {r['segments']} | {r['loadavg']} | {efs} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--ef", default="64,128,256,512")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2")
    parser.add_argument("--case", action="append", default=[], metavar="NAME=V,NAME=V")
    parser.add_argument("--probe", action="store_true", help="search during each load (off: cleaner stalls)")
    parser.add_argument("--out", type=Path, help="append each row to this JSON-lines file")
    parser.add_argument("--table", type=Path, help="only print the table of an --out file")
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return 0
    rows = []
    for overrides in combinations(args.grid, args.case):
        row = run_case(args.points, overrides, args.ef, args.queries, args.probe)
        rows.append(row)
        if args.out:
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
