"""Does a search of the embedded store (Qdrant Edge) let the process's other Python threads run?

The core process runs the engine's Python work, the calls of the HTTP workers and every store search on one
interpreter. A call into Qdrant Edge that holds the GIL while it searches stops all of that for its duration. For
each collection size and each `max_search_threads` (Qdrant Edge's: its default thread pool, or 1: the caller's
thread), this builds a shard with the service's configuration (app.store.edge_params.create_config) from random
unit vectors, then prints the search's wall and CPU milliseconds in one thread, and the searches/s of two threads
searching at once against one thread's: near 2x on two idle cores when searches release the GIL, near 1x when
each holds it (with Qdrant Edge's own thread pool a search may use both cores by itself: compare with 1).

    python -m bench.store_gil [--points 1000,20000] [--threads default,1] [--searches 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from app.config import Settings
from app.store.edge_params import create_config, search_params
from app.store.model import spec_from_settings
from bench.common import int_list

DIM = 512
SPEC = spec_from_settings(Settings(), dim=DIM, pack="bench")  # the service's collection settings


def build(path: Path, points: int, threads: int) -> object:
    from qdrant_edge import EdgeShard, Point, UpdateOperation

    shard = EdgeShard.create(str(path), create_config(dataclasses.replace(SPEC, search_threads=threads)))
    rng = np.random.default_rng(0)
    for start in range(0, points, 5000):
        vectors = rng.standard_normal((min(5000, points - start), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch = [
            Point(str(uuid.UUID(int=start + i + 1)), v.tolist(), {"file": f"f{start + i}.jpg"})
            for i, v in enumerate(vectors)
        ]
        shard.update(UpdateOperation.upsert_points(batch))
    shard.optimize()
    return shard


def measure(shard: object, searches: int) -> tuple[float, float, float]:
    """Search wall and CPU ms in one thread, and searches/s of two threads searching at once against one: near 2x
    on two idle cores when a search releases the GIL (and takes no lock of the shard's), near 1x when it holds it."""
    from qdrant_edge import Query, QueryBatchRequest, QueryRequest

    rng = np.random.default_rng(1)
    requests = [
        QueryBatchRequest(
            [
                QueryRequest(
                    limit=10,
                    query=Query.Nearest(rng.standard_normal(DIM).astype(np.float32).tolist()),
                    with_payload=True,
                    params=search_params(SPEC, 128),
                )
            ]
        )
        for _ in range(searches)
    ]
    run = shard.query_batch  # type: ignore[attr-defined]

    def search_all() -> None:
        for request in requests:
            run(request)

    search_all()  # warm: the pages of the shard in memory
    started, cpu = time.perf_counter(), time.process_time()
    search_all()
    one = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu) / searches * 1e3
    threads = [threading.Thread(target=search_all) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    two = time.perf_counter() - started
    return one / searches * 1e3, cpu_ms, (2 * searches / two) / (searches / one)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_gil", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int_list, default=[1000, 20000], help="collection sizes (default 1000,20000)")
    parser.add_argument("--threads", default="default,1", help="max_search_threads values (default default,1)")
    parser.add_argument("--searches", type=int, default=300, help="searches per measure (default 300)")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}; top 10, hnsw_ef 128, payload")
    print(f"{'points':>8} {'threads':>8} {'wall ms':>8} {'CPU ms':>7} {'2 searching threads / 1':>24}")
    for points in args.points:
        for value in args.threads.split(","):
            threads = 0 if value == "default" else int(value)
            with tempfile.TemporaryDirectory(prefix="oceano-store-gil-") as tmp:
                shard = build(Path(tmp) / "shard", points, threads)
                wall, cpu, speedup = measure(shard, args.searches)
                shard.close()  # type: ignore[attr-defined]
            print(f"{points:>8} {value:>8} {wall:>8.3f} {cpu:>7.3f} {speedup:>23.2f}x")


if __name__ == "__main__":
    main()
