"""Moving a collection: export to a portable folder, import from one, copy to another store (resumable), verify.

The export format ("oceano-collection", version 1), a folder:

    manifest.json          written last (an export without it is incomplete): format, version, collection name,
                           pack fingerprint, dim, the build parameters the collection was made with, the point
                           count, and per chunk its files, point count and SHA-256s
    vectors-00000.npy      float32 little-endian array (n, dim): the original vectors, in scan (id) order
    points-00000.jsonl     one JSON object per line, {"id": ..., "payload": {...}}, row i <-> vector row i

Everything streams a page at a time: memory stays at one chunk (CHUNK_POINTS vectors) whatever the collection's
size. Point ids are kept, so an import or a copy run twice writes the same points.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import InvalidRequest, PackMismatch
from app.store.model import SCROLL_PAGE, FacePoint, VectorStore, iter_pages

logger = logging.getLogger(__name__)

FORMAT = "oceano-collection"
VERSION = 1
MANIFEST = "manifest.json"
CHUNK_POINTS = 10_000


@dataclass
class Manifest:
    collection: str
    pack: str
    dim: int
    build: dict[str, Any]
    points: int = 0
    chunks: list[dict[str, Any]] = field(default_factory=list)
    backend: str = ""
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "collection": self.collection,
            "pack": self.pack,
            "dim": self.dim,
            "build": self.build,
            "points": self.points,
            "backend": self.backend,
            "created": self.created,
            "chunks": self.chunks,
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_collection(
    store: VectorStore, dest: Path, *, chunk_points: int = CHUNK_POINTS, progress: Callable[[int], None] | None = None
) -> Manifest:
    """Write every point of `store` under `dest` (a new or empty folder)."""
    if dest.exists() and any(dest.iterdir()):
        raise InvalidRequest(f"{dest} is not empty: export into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    spec = store.spec
    manifest = Manifest(
        collection=spec.name, pack=spec.pack, dim=spec.dim, build=spec.build(), backend=store.backend.value
    )
    buffer: list[FacePoint] = []

    def write_chunk() -> None:
        index = len(manifest.chunks)
        vectors, points = dest / f"vectors-{index:05d}.npy", dest / f"points-{index:05d}.jsonl"
        np.save(vectors, np.stack([p.vector for p in buffer]).astype("<f4"), allow_pickle=False)
        with points.open("w") as fh:
            for p in buffer:
                fh.write(json.dumps({"id": p.id, "payload": p.payload}, ensure_ascii=False) + "\n")
        manifest.chunks.append(
            {
                "vectors": vectors.name,
                "points": points.name,
                "count": len(buffer),
                "sha256": {vectors.name: _sha256(vectors), points.name: _sha256(points)},
            }
        )
        manifest.points += len(buffer)
        buffer.clear()
        if progress:
            progress(manifest.points)

    for page in iter_pages(store, limit=SCROLL_PAGE):
        buffer.extend(page.points)
        while len(buffer) >= chunk_points:
            rest = buffer[chunk_points:]
            del buffer[chunk_points:]
            write_chunk()
            buffer.extend(rest)
    if buffer:
        write_chunk()
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2))
    tmp.replace(dest / MANIFEST)
    return manifest


def read_manifest(src: Path) -> Manifest:
    path = src / MANIFEST
    if not path.is_file():
        raise InvalidRequest(f"{src} holds no {MANIFEST}: not an Oceano collection export, or an unfinished one")
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise InvalidRequest(
            f"{path} is format {raw.get('format')!r} version {raw.get('version')!r}; this Oceano "
            f"reads {FORMAT!r} version {VERSION}"
        )
    return Manifest(
        collection=raw["collection"],
        pack=raw["pack"],
        dim=int(raw["dim"]),
        build=raw["build"],
        points=int(raw["points"]),
        chunks=list(raw["chunks"]),
        backend=raw.get("backend", ""),
        created=float(raw.get("created", 0)),
    )


def iter_export(src: Path, manifest: Manifest, *, verify: bool = True) -> Iterator[list[FacePoint]]:
    """The exported points, a chunk at a time (vectors memory-mapped), checksums checked first."""
    for chunk in manifest.chunks:
        if verify:
            for name, digest in chunk["sha256"].items():
                if _sha256(src / name) != digest:
                    raise InvalidRequest(
                        f"{src / name} does not match its checksum in the manifest: the export is damaged"
                    )
        vectors = np.load(src / chunk["vectors"], mmap_mode="r", allow_pickle=False)
        if vectors.shape != (chunk["count"], manifest.dim):
            raise InvalidRequest(
                f"{src / chunk['vectors']} has shape {vectors.shape}, the manifest says "
                f"({chunk['count']}, {manifest.dim})"
            )
        with (src / chunk["points"]).open() as fh:
            rows = [json.loads(line) for line in fh]
        yield [
            FacePoint(row["id"], np.array(vectors[i], dtype=np.float32), row["payload"]) for i, row in enumerate(rows)
        ]


def check_pack(manifest: Manifest, store: VectorStore) -> None:
    if manifest.pack != store.spec.pack or manifest.dim != store.spec.dim:
        raise PackMismatch(
            f"the export holds embeddings of model pack '{manifest.pack}' (dim {manifest.dim}); "
            f"the target collection '{store.spec.name}' is for '{store.spec.pack}' (dim "
            f"{store.spec.dim}). Embeddings of different models cannot be compared: import into a "
            f"collection of the same pack (COLLECTION_NAME, MODEL_NAME)"
        )


def import_collection(
    src: Path, store: VectorStore, *, batch: int = SCROLL_PAGE, progress: Callable[[int], None] | None = None
) -> int:
    """Upsert every exported point into `store` (same ids: running it twice changes nothing)."""
    manifest = read_manifest(src)
    check_pack(manifest, store)
    done = 0
    for points in iter_export(src, manifest):
        for start in range(0, len(points), batch):
            store.upsert(points[start : start + batch])
        done += len(points)
        if progress:
            progress(done)
    store.flush()
    return done


@dataclass
class CopyReport:
    copied: int
    resumed_from: str | None
    source_count: int = 0
    target_count: int = 0
    samples: int = 0
    found_self: int = 0
    overlap_at_10: float = 0.0

    @property
    def verified(self) -> bool:
        return self.source_count == self.target_count and self.found_self == self.samples


def copy_points(
    source: VectorStore,
    target: VectorStore,
    checkpoint: Path,
    *,
    page: int = SCROLL_PAGE,
    on_page: Callable[[int], None] | None = None,
) -> CopyReport:
    """Copy every point of `source` into `target`, a page at a time. After each page is written (and confirmed,
    the server path writes with wait=True) the offset of the next page goes to `checkpoint`: killed at any
    moment, the next run starts from there (a page written twice changes nothing)."""
    check_pack(Manifest(collection=source.spec.name, pack=source.spec.pack, dim=source.spec.dim, build={}), target)
    state = json.loads(checkpoint.read_text()) if checkpoint.is_file() else {}
    if state.get("done"):
        return CopyReport(copied=0, resumed_from="done")
    offset = state.get("offset")
    copied = 0
    for chunk in iter_pages(source, offset=offset, limit=page):
        target.upsert(chunk.points)
        copied += len(chunk.points)
        _write_json(
            checkpoint,
            {
                "offset": chunk.next_offset,
                "copied": int(state.get("copied", 0)) + copied,
                "done": chunk.next_offset is None,
                "source": source.spec.name,
                "target": target.spec.name,
                "updated": time.time(),
            },
        )
        if on_page:
            on_page(copied)
    target.flush()
    return CopyReport(copied=copied, resumed_from=offset)


def verify_copy(
    source: VectorStore,
    target: VectorStore,
    report: CopyReport,
    *,
    samples: int = 50,
    hnsw_ef: int = 128,
    seed: int = 0,
) -> CopyReport:
    """Counts must agree; each sampled point (from random places in the id space) must be its own best match in
    the target, and the target's top 10 should agree with the source's."""
    report.source_count, report.target_count = source.count(), target.count()
    rng = random.Random(seed)
    picked: dict[str, FacePoint] = {}
    for _ in range(samples * 3):
        if len(picked) >= samples or report.source_count == 0:
            break
        start = str(uuid.UUID(int=rng.getrandbits(128)))
        hit = source.page(start, 1).points or source.page(None, 1).points
        picked.update((p.id, p) for p in hit)
    points = list(picked.values())
    if points:
        vectors = np.stack([p.vector for p in points])
        src = source.search(vectors, limit=10, threshold=None, hnsw_ef=hnsw_ef)
        dst = target.search(vectors, limit=10, threshold=None, hnsw_ef=hnsw_ef)
        report.samples = len(points)
        report.found_self = sum(any(m.id == p.id for m in row) for p, row in zip(points, dst, strict=True))
        overlaps = [len({m.id for m in a} & {m.id for m in b}) / max(1, len(a)) for a, b in zip(src, dst, strict=True)]
        report.overlap_at_10 = float(np.mean(overlaps))
    return report


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
