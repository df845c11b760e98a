"""One level of closed-loop search load for bench/gpu.py, run in a fresh process of its own (no CUDA context, no
sampler thread to fork): the clients of the shared load generator (../shared/gpu/loadgen.py, or /tmp/gpu/loadgen.py
on the GPU machine: its `request` and `worker`, raw keep-alive sockets spread over processes) with the warm-up and
window given here, or, without that file, bench.overload's closed loop in this one process. Prints one JSON object:
answers 200 per second of the window, their p50/p95/p99, the 503s (and those without Retry-After), other answers.

    python -m bench.gpu_load --loadgen PATH|- --url http://127.0.0.1:PORT --image Q.jpg --clients 50 \
        --seconds 15 --warmup 3 [--procs 4] [--path /api/search]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import multiprocessing
import sys
from collections import Counter
from pathlib import Path
from typing import Any

Sample = tuple[str, float, bool]  # status ("200", "503", or a transport error's name), seconds, Retry-After given


def with_loadgen(loadgen: Path, host: str, port: int, path: str, image: Path, clients: int, args: Any) -> list[Sample]:
    """loadgen.py's clients in `args.procs` processes; its `main` fixes the warm-up at 3 s, so its parts are used."""
    sys.path.insert(0, str(loadgen.parent))  # spawned children import it by name too
    gen = importlib.import_module(loadgen.stem)
    request = gen.request(host, port, path, str(image))
    queue: Any = multiprocessing.Queue()
    procs = max(1, min(args.procs, clients))
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [
        multiprocessing.Process(target=gen.worker, args=(host, port, request, n, args.warmup, args.seconds, queue))
        for n in per
    ]
    for worker in workers:
        worker.start()
    samples: list[Sample] = [tuple(s) for _ in workers for s in queue.get()]
    for worker in workers:
        worker.join()
    return samples


def with_overload(url: str, image: Path, clients: int, args: Any) -> list[Sample]:
    from bench.load_client import closed_loop

    answers, _ = asyncio.run(closed_loop(url, image.read_bytes(), clients, args.warmup, args.seconds, timeout=60))
    return [(a.status, a.latency, a.retry_after) for a in answers]


def summary(samples: list[Sample], seconds: float) -> dict[str, Any]:
    import numpy as np  # here: its thread pool would be in the process when the clients' processes fork

    ok = np.asarray([s for st, s, _ in samples if st == "200"]) * 1e3

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ok, q)), 1) if ok.size else None

    statuses = Counter(st for st, _, _ in samples)
    return {
        "ok_per_s": round(ok.size / seconds, 2),
        "ok": int(ok.size),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "n503": statuses.pop("503", 0),
        "n503_without_retry_after": sum(1 for st, _, ra in samples if st == "503" and not ra),
        "errors": {k: v for k, v in sorted(statuses.items()) if k != "200"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loadgen", required=True, help="loadgen.py, or - for bench.overload's closed loop")
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--path", default="/api/search")
    args = parser.parse_args()
    host, port = args.url.removeprefix("http://").rsplit(":", 1)
    if args.loadgen == "-":
        samples = with_overload(args.url, args.image, args.clients, args)
    else:
        samples = with_loadgen(Path(args.loadgen), host, int(port), args.path, args.image, args.clients, args)
    print(json.dumps(summary(samples, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
