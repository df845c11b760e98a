"""The `python -m app.collection` command: export, import, migrate, snapshot, restore and describe a collection.

The embedded store (Qdrant Edge) belongs to one process: while the Oceano service runs, it holds it, and this
command refuses to touch it (stop the service first). On a Qdrant server (QDRANT_URL) the service may keep running.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.ingest_client import EXIT_FAILED, EXIT_OK, EXIT_USAGE, probe_service
from app.config import Settings
from app.engine import resolve_pack
from app.errors import OceanoError
from app.store import (
    EdgeStore,
    ServerStore,
    VectorStore,
    open_store,
    recorded_identity,
    server_client,
    spec_from_settings,
)
from app.store.compact import compact
from app.store.transfer import copy_points, export_collection, import_collection, read_manifest, verify_copy

logger = logging.getLogger(__name__)

# Build parameters an import may carry over from the export (--keep-build) and the settings they set.
# Compaction: segments of 250k points with a stronger graph than ingest can afford (docs/SCALE.md: at 300k points
# recall@10 at ef 64 went from 0.965 to 0.998; at 1M the search CPU at ef 128 from 23 to 5 ms).
COMPACT_SEGMENT_POINTS = 250_000
COMPACT_M = 24
COMPACT_EF_CONSTRUCT = 200
BUILD_SETTINGS = (
    "hnsw_m",
    "hnsw_ef_construct",
    "quantization",
    "vectors_on_disk",
    "index_threshold",
    "max_segment_points",
    "segment_number",
    "search_threads",
)

EPILOG = """\
examples:
  python -m app.collection info
  python -m app.collection export /backup/faces-2024-06            # a folder: manifest.json + .npy + .jsonl
  COLLECTION_NAME=faces2 python -m app.collection import /backup/faces-2024-06
  python -m app.collection migrate --to http://qdrant-0:6333        # embedded -> server/cluster, resumable
  python -m app.collection snapshot /backup/faces-snap              # embedded: a consistent copy of the folder
  python -m app.collection compact                                  # embedded: few large segments (service stopped)
  QDRANT_URL=http://qdrant-0:6333 python -m app.collection snapshot  # server: a Qdrant snapshot

Settings (QDRANT_PATH, QDRANT_URL, COLLECTION_NAME, MODEL_NAME, PORT, ...) come from the environment, as for the
service. The embedded store is refused while the service runs: stop it first. docs/SCALE.md has the details.
"""


class Refused(Exception):
    """A clear reason not to go on (printed, exit status 1)."""


def _service_holds_store(settings: Settings, url: str | None) -> None:
    if settings.qdrant_url:
        return
    where = (url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    if probe_service(where):
        raise Refused(
            f"the Oceano service at {where} is running and owns the embedded store "
            f"{settings.qdrant_path / settings.collection_name}; stop it (e.g. docker compose stop "
            f"oceano-api), run this command, then start it again"
        )


def open_existing(settings: Settings) -> VectorStore:
    identity = recorded_identity(settings)
    if identity is None:
        where = settings.qdrant_url or settings.qdrant_path
        raise Refused(f"there is no collection '{settings.collection_name}' at {where}")
    pack, dim = identity
    return open_store(settings, dim=dim, pack=pack)


def _progress(what: str) -> Any:
    state = {"last": 0.0}

    def report(n: int) -> None:
        if time.monotonic() - state["last"] > 5:
            state["last"] = time.monotonic()
            logger.info("%s: %d points", what, n)

    return report


def cmd_info(settings: Settings, args: argparse.Namespace) -> int:
    store = open_existing(settings)
    try:
        info = store.info()
        print(
            f"collection {info.name} ({info.backend.value}): {info.vectors} points, {info.unindexed} unindexed, "
            f"status {info.status}\npack {info.pack}, dim {store.spec.dim}\nbuilt with {store.spec.build()}"
        )
    finally:
        store.close()
    return EXIT_OK


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    store = open_existing(settings)
    try:
        manifest = export_collection(store, args.path, chunk_points=args.chunk, progress=_progress("exported"))
    finally:
        store.close()
    print(f"exported {manifest.points} points of '{manifest.collection}' (pack {manifest.pack}) to {args.path}")
    return EXIT_OK


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    manifest = read_manifest(args.path)
    identity = recorded_identity(settings)
    target_pack = identity[0] if identity else resolve_pack(settings).fingerprint
    if manifest.pack != target_pack:
        raise Refused(
            f"the export holds embeddings of model pack '{manifest.pack}', but collection "
            f"'{settings.collection_name}' {'holds' if identity else 'would hold'} '{target_pack}': "
            f"embeddings of different models cannot be compared. Import into another COLLECTION_NAME "
            f"with MODEL_NAME set to the export's pack"
        )
    if args.keep_build:
        settings = settings.model_copy(update={k: manifest.build[k] for k in BUILD_SETTINGS if k in manifest.build})
    store = open_store(settings, dim=manifest.dim, pack=manifest.pack)
    try:
        done = import_collection(args.path, store, progress=_progress("imported"))
        store.optimize()  # the embedded store builds its index now, not in the service's first minutes
        count = store.count()
    finally:
        store.close()
    print(f"imported {done} points into '{settings.collection_name}' ({count} points there now)")
    return EXIT_OK if count >= manifest.points else EXIT_FAILED


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    if settings.qdrant_url and settings.qdrant_url.rstrip("/") == args.to.rstrip("/"):
        raise Refused("--to is the store this collection is already on")
    name = args.collection or settings.collection_name
    key = hashlib.sha1(f"{args.to}|{name}".encode()).hexdigest()[:10]
    checkpoint = args.checkpoint or settings.state_dir / f"migrate-{settings.collection_name}-{key}.json"
    if args.restart:
        checkpoint.unlink(missing_ok=True)
    source = open_existing(settings)
    try:
        target_settings = settings.model_copy(update={"collection_name": name})
        spec = spec_from_settings(target_settings, dim=source.spec.dim, pack=source.spec.pack)
        target = ServerStore(
            server_client(settings, args.to, args.api_key), spec, consistency=settings.qdrant_read_consistency
        )
        try:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            report = copy_points(source, target, checkpoint, on_page=_progress("copied"))
            report = verify_copy(source, target, report, samples=args.samples, hnsw_ef=settings.hnsw_ef)
        finally:
            target.close()
    finally:
        source.close()
    resumed = f", resumed from {report.resumed_from}" if report.resumed_from else ""
    print(
        f"copied {report.copied} points{resumed}; source {report.source_count}, target {report.target_count}; "
        f"{report.found_self}/{report.samples} sampled points found themselves in the target, top-10 overlap "
        f"{report.overlap_at_10:.3f}"
    )
    if not report.verified:
        print("verification FAILED: counts or sampled searches differ (run again to resume, or --restart)")
        return EXIT_FAILED
    print(f"verified. Point the service at it: QDRANT_URL={args.to} COLLECTION_NAME={name}")
    return EXIT_OK


def cmd_snapshot(settings: Settings, args: argparse.Namespace) -> int:
    store = open_existing(settings)
    try:
        if isinstance(store, EdgeStore):
            if args.path is None:
                raise Refused("the embedded store's snapshot needs a PATH (a new folder)")
            if args.path.exists():
                raise Refused(f"{args.path} exists: snapshot into a new folder")
            store.snapshot(args.path)
            print(
                f"consistent copy of {store.path} in {args.path} (restore: python -m app.collection restore "
                f"{args.path})"
            )
        elif isinstance(store, ServerStore):
            name = store.snapshot()
            print(
                f"snapshot {name} of '{settings.collection_name}' created on the server answering "
                f"{settings.qdrant_url} (a cluster: run it against every node). Download it from "
                f"{settings.qdrant_url}/collections/{settings.collection_name}/snapshots/{name}"
            )
    finally:
        store.close()
    return EXIT_OK


def cmd_compact(settings: Settings, args: argparse.Namespace) -> int:
    if settings.qdrant_url:
        raise Refused("a Qdrant server compacts its own segments in the background; compact is for the embedded store")
    path = settings.qdrant_path / settings.collection_name
    logger.info(
        "compacting %s into segments of %d points (the service must stay stopped meanwhile)", path, args.segment_points
    )
    report = compact(path, segment_points=args.segment_points, hnsw_m=args.m, ef_construct=args.ef_construct)
    print(
        f"compacted {report.points} points: {report.segments_before} -> {report.segments_after} segments in "
        f"{report.seconds:.0f}s"
    )
    return EXIT_OK


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    if settings.qdrant_url:
        client = server_client(settings)
        client.recover_snapshot(settings.collection_name, location=args.path_or_url, wait=True)
        print(f"recovered '{settings.collection_name}' from {args.path_or_url}")
        return EXIT_OK
    src = Path(args.path_or_url)
    dest = settings.qdrant_path / settings.collection_name
    if not (src / "oceano.json").is_file():
        raise Refused(f"{src} is not an embedded-store snapshot (no oceano.json)")
    if dest.exists():
        raise Refused(f"{dest} exists; move it away first (or set COLLECTION_NAME to restore beside it)")
    shutil.copytree(src, dest)
    store = open_existing(settings)  # opens and checks it
    try:
        print(f"restored {store.count()} points into {dest}")
    finally:
        store.close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.collection",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export, import, migrate, snapshot or restore the collection.",
    )
    parser.add_argument("--url", help="where the Oceano service would answer (default http://127.0.0.1:$PORT)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="the collection: points, pack, build parameters")
    p = sub.add_parser("export", help="write the collection to a new folder (portable format)")
    p.add_argument("path", type=Path)
    p.add_argument("--chunk", type=int, default=10_000, help="points per .npy/.jsonl pair")
    p = sub.add_parser("import", help="upsert an export into COLLECTION_NAME (created with the current settings)")
    p.add_argument("path", type=Path)
    p.add_argument("--keep-build", action="store_true", help="create it with the export's build parameters")
    p = sub.add_parser("migrate", help="copy the collection to a Qdrant server or cluster (resumable), verify")
    p.add_argument("--to", required=True, metavar="URL")
    p.add_argument("--api-key", default=None, help="the target's API key (default QDRANT_API_KEY)")
    p.add_argument("--collection", help="name on the target (default COLLECTION_NAME)")
    p.add_argument("--checkpoint", type=Path, help="progress file (default STATE_DIR/migrate-....json)")
    p.add_argument("--restart", action="store_true", help="forget the checkpoint and copy from the start")
    p.add_argument("--samples", type=int, default=50, help="points searched in both stores to verify")
    p = sub.add_parser("snapshot", help="embedded: consistent copy into PATH; server: a Qdrant snapshot")
    p.add_argument("path", type=Path, nargs="?")
    p = sub.add_parser("compact", help="embedded: merge small index segments into large ones (service stopped)")
    p.add_argument("--segment-points", type=int, default=COMPACT_SEGMENT_POINTS, help="points per merged segment")
    p.add_argument("--m", type=int, default=COMPACT_M, help="HNSW m of the merged segments")
    p.add_argument(
        "--ef-construct", type=int, default=COMPACT_EF_CONSTRUCT, help="HNSW ef_construct of the merged segments"
    )
    p = sub.add_parser("restore", help="embedded: a snapshot folder back in place; server: recover a snapshot")
    p.add_argument("path_or_url")
    return parser


COMMANDS = {
    "info": cmd_info,
    "export": cmd_export,
    "import": cmd_import,
    "migrate": cmd_migrate,
    "snapshot": cmd_snapshot,
    "restore": cmd_restore,
    "compact": cmd_compact,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"bad settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        _service_holds_store(settings, args.url)
        return COMMANDS[args.command](settings, args)
    except (Refused, OceanoError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
