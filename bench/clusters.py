"""Clusters of unknown faces (app.people.clusters): quality on the labelled eval set, time and memory at scale.

`eval`: every photo of the eval set (../shared/eval/faces-a) is indexed without a subject by the real service
(bundled models, real Qdrant Edge, fresh state), then clustered at each CLUSTER_MAX_DISTANCE of a sweep and
compared with labels.csv (the largest face of each photo carries its label; other faces take part unlabelled):
purity, identities split over several clusters, labelled faces left unclustered, pairwise precision / recall. It
also prints the same-person / different-person score percentiles that the defaults are anchored on.

`scale`: N synthetic unknown faces made as bench.scale makes them (identities with noise around centres), one full
clustering run, then 1,000 more faces and an incremental run: run time and peak RSS (VmHWM, reset before each
run, which counts the store's memory-mapped files too; and the peak of RssAnon, the process's own memory, sampled)
of each, cluster purity against the centres, and the load average.

    python -m bench.clusters eval [--min-faces 3] [--distances 0.5,0.55,0.6,0.64,0.7]
    python -m bench.clusters scale [--points 100000] [--min-faces 3] [--max-distance 0.6]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from app.bootstrap import open_services
from app.config import Settings
from app.people import ClusterParams, ClusterRun, Clusters, ClusterState
from app.people.clusters_run import CLUSTER_KEY, CORE_KEY, HNSW_EF, NEIGHBOURS
from app.service import ImageToIndex, content_hash
from app.store import FaceFilter, FacePoint
from bench.common import eval_labels, setup_logging
from bench.scale_data import CHUNK, Data, point_uuid


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class AnonPeak(threading.Thread):
    """The largest RssAnon seen (the process's own memory, without the store's memory-mapped files, which VmHWM
    counts too), sampled every 50 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = rss_kb("RssAnon")
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.05):
            self.peak_kb = max(self.peak_kb, rss_kb("RssAnon"))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kb


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS (Linux 4.0+)


def scores(labels: Mapping[str, str], faces: Mapping[str, np.ndarray]) -> dict[str, float]:
    keys = sorted(labels)
    matrix = np.stack([faces[k] / np.linalg.norm(faces[k]) for k in keys])
    sims = matrix @ matrix.T
    same: list[float] = []
    other: list[float] = []
    for i, j in itertools.combinations(range(len(keys)), 2):
        (same if labels[keys[i]] == labels[keys[j]] else other).append(float(sims[i, j]))
    s, o = np.asarray(same), np.asarray(other)
    return {
        "same p10": float(np.percentile(s, 10)),
        "same p25": float(np.percentile(s, 25)),
        "same median": float(np.median(s)),
        "other p99": float(np.percentile(o, 99)),
        "other p99.9": float(np.percentile(o, 99.9)),
        "other max": float(o.max()),
    }


def compare(labels: Mapping[str, Any], members: Mapping[str, str]) -> dict[str, Any]:
    """Clusters (face -> cluster) against labels (face -> identity), over the labelled faces."""
    by_cluster: dict[str, Counter[Any]] = defaultdict(Counter)
    clusters_of: dict[Any, set[str]] = defaultdict(set)
    for face, identity in labels.items():
        cluster = members.get(face)
        if cluster is not None:
            by_cluster[cluster][identity] += 1
            clusters_of[identity].add(cluster)
    clustered = sum(sum(c.values()) for c in by_cluster.values())
    purity = sum(max(c.values()) for c in by_cluster.values()) / clustered if clustered else 0.0
    same_cluster = sum(n * (n - 1) // 2 for c in by_cluster.values() for n in [sum(c.values())])
    both = sum(n * (n - 1) // 2 for c in by_cluster.values() for n in c.values())
    per_identity = Counter(labels.values())
    same_identity = sum(n * (n - 1) // 2 for n in per_identity.values())
    return {
        "clusters": len(by_cluster),
        "purity": round(purity, 4),
        "split": sum(1 for s in clusters_of.values() if len(s) > 1),
        "identities clustered": len(clusters_of),
        "unclustered": len(labels) - clustered,
        "pair precision": round(both / same_cluster, 4) if same_cluster else None,
        "pair recall": round(both / same_identity, 4) if same_identity else None,
    }


def run_clustering(services: Any, state_path: Path, params: ClusterParams, job: str) -> tuple[Clusters, float]:
    state = ClusterState(state_path)
    clusters = Clusters(service=services.people.service, state=state, params=params)
    started = time.perf_counter()
    outcome = ClusterRun(book=clusters.book, params=params, lock=clusters.lock, run_id=job).run()
    assert outcome.value == "completed", outcome
    return clusters, time.perf_counter() - started


def all_members(store: Any) -> dict[str, str]:
    members: dict[str, str] = {}
    offset = None
    while True:
        faces, offset = store.scroll(FaceFilter(no_subject=True), offset=offset, limit=1000, keys=[CLUSTER_KEY])
        members.update({f.id: str(f.payload[CLUSTER_KEY]) for f in faces if f.payload.get(CLUSTER_KEY)})
        if offset is None:
            return members


def clear_clusters(store: Any, ids: Iterable[str]) -> None:
    store.set_payload(list(ids), {CLUSTER_KEY: None, CORE_KEY: None})


def bench_eval(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(state_dir=root, thumbs_dir=root / "thumbs", qdrant_path=root / "qdrant", qdrant_url="")
        services = open_services(settings, jobs=False, batcher=False, sweep=False, keys=False)
        try:
            labels: dict[str, str] = {}
            for path, identity in eval_labels():
                data = path.read_bytes()
                item = ImageToIndex(
                    image=services.service.decode(data), content_hash=content_hash(data), file=path.name
                )
                done = services.service.index([item])[0]
                faces = services.store.retrieve(done.ids)
                if faces:
                    largest = max(faces, key=lambda f: _area(f.payload.get("bbox")))
                    labels[largest.id] = identity
            every = [f.id for f in services.store.scroll(FaceFilter(), offset=None, limit=10_000, keys=[])[0]]
            vectors = services.store.vectors(list(labels))
            threshold = services.people.threshold() if services.people else None
            print(
                f"eval set: {len(labels)} labelled faces ({len(every)} faces in all), {len(set(labels.values()))} ids"
            )
            if threshold is not None:
                print(f"'same person' threshold in force: {threshold.threshold} ({threshold.source})")
            print(
                "scores (cosine) of the labelled faces: "
                + ", ".join(f"{k} {v:.3f}" for k, v in scores(labels, vectors).items())
            )
            header = [
                "max_distance",
                "min_faces",
                "clusters",
                "purity",
                "split",
                "identities clustered",
                "unclustered",
                "pair precision",
                "pair recall",
            ]
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
            for min_faces in args.min_faces:
                for n, distance in enumerate(args.distances):
                    clear_clusters(services.store, every)
                    params = ClusterParams(min_faces=min_faces, max_distance=distance)
                    run_clustering(services, root / f"people-{min_faces}-{n}.sqlite", params, f"eval-{n}")
                    result = compare(labels, all_members(services.store))
                    row = {"max_distance": distance, "min_faces": min_faces, **result}
                    print("| " + " | ".join(str(row[h]) for h in header) + " |")
        finally:
            services.close()


def _area(bbox: Any) -> float:
    if not bbox:
        return 0.0
    x1, y1, x2, y2 = bbox
    return float((x2 - x1) * (y2 - y1))


def bench_scale(args: argparse.Namespace) -> None:
    data = Data(args.points + args.more)
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(
            state_dir=root, thumbs_dir=root / "thumbs", qdrant_path=root / "qdrant", qdrant_url="", min_free_disk_mb=0
        )
        services = open_services(settings, jobs=False, batcher=False, sweep=False, keys=False)
        try:
            store = services.store
            centres: dict[str, int] = {}
            started = time.perf_counter()

            def load(first: int, last: int) -> None:
                for k in range(first // CHUNK, last // CHUNK):
                    centre_ids, vectors = data.chunk(k)
                    start = k * CHUNK
                    store.upsert(
                        [
                            FacePoint(point_uuid(start + j), v, {"file": f"/s/{start + j}.jpg", "det_score": 0.9})
                            for j, v in enumerate(vectors)
                        ]
                    )
                    centres.update({point_uuid(start + j): int(c) for j, c in enumerate(centre_ids)})
                wait = getattr(store, "wait_indexed", None)
                if wait:
                    wait()

            load(0, args.points)
            print(f"loaded {args.points} faces ({data.n_centres} identities) in {time.perf_counter() - started:.0f}s")
            params = ClusterParams(
                min_faces=args.min_faces,
                max_distance=args.max_distance,
                neighbours=args.neighbours,
                hnsw_ef=args.hnsw_ef,
            )
            print(f"params: {params}")
            assert services.people is not None
            state = ClusterState(root / "people.sqlite")
            clusters = Clusters(service=services.people.service, state=state, params=params)
            for label, job in (("full", "scale-1"), ("incremental", "scale-2")):
                if label == "incremental":
                    load(args.points, args.points + args.more)
                    before = all_members(store)
                reset_peak()
                rss0, anon0 = rss_kb("VmRSS"), rss_kb("RssAnon")
                anon = AnonPeak()
                anon.start()
                load0 = os.getloadavg()[0]
                started = time.perf_counter()
                cpu0 = time.process_time()
                run = ClusterRun(book=clusters.book, params=params, lock=clusters.lock, run_id=job)
                outcome = run.run()
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
                peak = rss_kb("VmHWM") / 1024  # before the bench's own reading of the results
                anon_peak = anon.stop() / 1024
                members = all_members(store)
                quality = compare({f: centres[f] for f in centres}, members)
                print(
                    f"{label}: {outcome.value} in {seconds:.1f}s (CPU {cpu:.1f}s), peak RSS {peak:.0f} MiB (from "
                    f"{rss0 / 1024:.0f} MiB; anonymous {anon_peak:.0f} MiB from {anon0 / 1024:.0f} MiB), load "
                    f"{load0:.2f} -> {os.getloadavg()[0]:.2f}; {run.counts}"
                )
                print(f"  vs centres: {quality}")
                started = time.perf_counter()
                listed = clusters.page(offset=0, limit=50, min_size=0)
                print(
                    f"  GET /api/clusters' work (page of 50, total {listed.total}, unclustered {listed.unclustered}): "
                    f"{1000 * (time.perf_counter() - started):.0f} ms"
                )
                if label == "incremental":
                    moved = sum(1 for f, c in before.items() if members.get(f) != c)
                    new = [point_uuid(i) for i in range(args.points, args.points + args.more)]
                    print(
                        f"  faces that changed cluster: {moved}; new faces clustered: {sum(f in members for f in new)}"
                    )
            state.close()
        finally:
            services.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    ev = sub.add_parser("eval")
    ev.add_argument("--min-faces", type=lambda s: [int(x) for x in s.split(",")], default=[3])
    ev.add_argument("--distances", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.55, 0.6, 0.64, 0.7])
    sc = sub.add_parser("scale")
    sc.add_argument("--points", type=int, default=100_000)
    sc.add_argument("--more", type=int, default=1_000)
    sc.add_argument("--min-faces", type=int, default=3)
    sc.add_argument("--max-distance", type=float, default=0.6)
    sc.add_argument("--neighbours", type=int, default=NEIGHBOURS)
    sc.add_argument("--hnsw-ef", type=int, default=HNSW_EF)
    args = parser.parse_args(argv)
    setup_logging()
    (bench_eval if args.mode == "eval" else bench_scale)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
