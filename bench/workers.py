"""Searches/s of one process against a core process with HTTP workers (WORKERS), with the stand-in engine.

ENGINE_STANDIN=1 (loudly: the ONNX runs are replaced by outputs recorded once per input shape, see
app.engine.runtime.ReplaySession), so what is measured is everything but inference: HTTP, multipart, decode, the
engine's pre/post-processing, the store, JSON. That is the ceiling a machine whose accelerator makes inference
free meets, and the work that WORKERS spreads over the cores. `--layout gpu` (ENGINE_STANDIN_LAYOUT=gpu) lays that
work out as on a GPU (detector batches of 16 on one canvas, uint8 detector input, padded chunks): the core's CPU per
search then is what bounds a GPU machine's core process.

For each round, for each WORKERS value in turn (A B A B: the machine's other load falls on both alike): start
`python -m app` on fresh state, index a few photos, then closed-loop clients (bench.overload's: keep-alive
connections, the same 640 px one-face JPEG POSTed to /api/search, the next sent when the answer is in) at each
level. Printed per run: 200/s, 200 p50/p95, 503s, other answers, the CPU milliseconds per search answered (200)
of the service's processes together and of the core alone (the process that owns the engine: 1000 / its ms per
search bounds the searches/s however many workers there are), and the load average.

    python -m bench.workers [--workers 1,2] [--levels 50,200] [--duration 15] [--rounds 2] [--layout cpu|gpu]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from app.config import StandinLayout
from bench.live import live_server
from bench.load_client import closed_loop, cpu_seconds
from bench.overload import index_photos, prepare, query_photo
from bench.overload_report import Answer, pct_ms

logger = logging.getLogger("bench.workers")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (the core and its HTTP workers)."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    for child in children:
        try:
            total += cpu_seconds(int(child))
        except OSError:
            continue  # ended meanwhile
    return total


@dataclass
class Run:
    workers: int
    clients: int
    duration: float
    answers: list[Answer]
    cpu_s: float  # the service's processes together
    core_cpu_s: float  # the process that owns the engine (the only one with WORKERS=1)
    load: float

    def count(self, status: str) -> int:
        return sum(1 for a in self.answers if a.status == status)

    @property
    def throughput(self) -> float:
        return self.count("200") / self.duration

    def latencies(self) -> list[float]:
        return [a.latency for a in self.answers if a.status == "200"]


def measure(workers: int, levels: list[int], args: argparse.Namespace, query: bytes) -> list[Run]:
    env = {"ENGINE_STANDIN": "1", "ENGINE_STANDIN_LAYOUT": args.layout, "WORKERS": str(workers)}
    runs = []
    with live_server(env=env, prefix="oceano-workers-") as server:
        prepare(server, query, index_photos())
        for clients in levels:
            cpu, core_cpu, load = tree_cpu_seconds(server.pid), cpu_seconds(server.pid), os.getloadavg()[0]
            answers, _ = asyncio.run(
                closed_loop(server.base_url, query, clients, args.warmup, args.duration, timeout=60.0)
            )
            run = Run(
                workers,
                clients,
                args.duration,
                answers,
                tree_cpu_seconds(server.pid) - cpu,
                cpu_seconds(server.pid) - core_cpu,
                load,
            )
            logger.info("WORKERS=%d, %d clients: %.1f searches/s", workers, clients, run.throughput)
            runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.workers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="WORKERS values, alternated (default 1,2)")
    parser.add_argument("--levels", default="50,200", help="client counts (default 50,200)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds counted per level (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before counting (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds (default 2)")
    parser.add_argument(
        "--layout",
        choices=[layout.value for layout in StandinLayout],
        default=StandinLayout.CPU.value,
        help="the stand-in's layout (ENGINE_STANDIN_LAYOUT): cpu, or gpu for the work a GPU machine's processes do "
        "(detector batches of 16 on one canvas, uint8 input, padded chunks) (default cpu)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workers = [int(v) for v in args.workers.split(",") if v.strip()]
    levels = [int(v) for v in args.levels.split(",") if v.strip()]
    name, query = query_photo(None)
    print(
        f"STAND-IN ENGINE (ENGINE_STANDIN=1, layout {args.layout}): inference replaced by recorded outputs; "
        "everything else is real"
    )
    print(f"query {name} at 640 px; {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}")
    runs = [run for _ in range(args.rounds) for w in workers for run in measure(w, levels, args, query)]
    print(
        f"{'WORKERS':>7} {'clients':>7} {'200/s':>7} {'p50':>8} {'p95':>8} {'503':>6} {'other':>6} "
        f"{'CPU ms/search':>13} {'core ms/search':>14} {'load':>5}"
    )
    for run in runs:
        answered = max(1, run.count("200"))
        print(
            f"{run.workers:>7} {run.clients:>7} {run.throughput:>7.1f} {pct_ms(run.latencies(), 50):>8} "
            f"{pct_ms(run.latencies(), 95):>8} {run.count('503'):>6} "
            f"{len(run.answers) - run.count('200') - run.count('503'):>6} {run.cpu_s / answered * 1e3:>13.1f} "
            f"{run.core_cpu_s / answered * 1e3:>14.1f} {run.load:>5.2f}"
        )
    for clients in levels:
        means = {
            w: sum(r.throughput for r in runs if r.workers == w and r.clients == clients) / args.rounds for w in workers
        }
        base = means[workers[0]] or 1.0
        print(
            f"{clients} clients, mean 200/s: "
            + ", ".join(f"WORKERS={w} {v:.1f} ({v / base:.2f}x)" for w, v in means.items())
        )


if __name__ == "__main__":
    main()
