"""What the start-up sweep of orphan crops costs: one walk of THUMBS_DIR, the store asked 1000 ids at a time.

    python -m bench.orphan_sweep [--faces 50000] [--orphans 500]

An embedded collection of `--faces` points (random unit vectors), a crop file for each, plus `--orphans` crops with
no point (made old enough to be swept); prints the seconds (wall and CPU) of ThumbnailStore.sweep_orphans as
FaceService runs it at start-up, and checks that exactly the orphans went.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from app.store import CollectionSpec, EdgeStore, FacePoint, ThumbnailStore, point_id
from bench.common import setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=50_000)
    parser.add_argument("--orphans", type=int, default=500)
    args = parser.parse_args(argv)
    setup_logging()
    with tempfile.TemporaryDirectory(prefix="oceano-sweep-") as tmp:
        store = EdgeStore(Path(tmp) / "qdrant", CollectionSpec(name="faces", dim=512, pack="sweep"), index_threshold=0)
        thumbs = ThumbnailStore(Path(tmp) / "thumbs")
        rng = np.random.default_rng(0)
        old = time.time() - 3600
        for start in range(0, args.faces, 5000):
            n = min(5000, args.faces - start)
            vectors = rng.standard_normal((n, 512)).astype(np.float32)
            points = [FacePoint(point_id(f"sweep{start + i}", 0), vectors[i], {}) for i in range(n)]
            store.upsert(points)
            for p in points:
                thumbs.save(p.id, b"\xff\xd8 crop")
        orphans = [point_id(f"orphan{i}", 0) for i in range(args.orphans)]
        for face_id in orphans:
            thumbs.save(face_id, b"\xff\xd8 orphan")
            os.utime(thumbs.path_for(face_id), (old, old))

        def stored(ids: list[str]) -> set[str]:
            return {m.id for m in store.retrieve(ids)}

        started, cpu = time.perf_counter(), time.process_time()
        removed = thumbs.sweep_orphans(stored, min_age=0.0)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        left = sum(1 for _ in thumbs.root.glob("*/*.jpg"))
        store.close()
    print(
        f"load average {os.getloadavg()[0]:.2f}; {args.faces} crops with a point + {args.orphans} orphans: "
        f"sweep {wall:.2f} s wall, {cpu:.2f} s CPU ({wall / (args.faces + args.orphans) * 1e6:.1f} us per crop); "
        f"removed {removed}, crops left {left}"
    )
    raise SystemExit(0 if removed == args.orphans and left == args.faces else 1)


if __name__ == "__main__":
    main()
