"""Concurrent writers of one source file (FaceService.write_points, deletes): each file's replace is atomic with
respect to the others; ingest, API writes, deletes and searches at once leave a consistent collection."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.engine import FaceEngine
from app.imaging import decode_image
from app.service import ImageToIndex, content_hash
from app.store import Origin, PointQuery
from tests.support import Photos, face_folder, workspace


def item(path: Path, file: str) -> ImageToIndex:
    data = path.read_bytes()
    image = decode_image(data, max_bytes=len(data) + 1, max_pixels=50_000_000)
    return ImageToIndex(image=image, content_hash=content_hash(data), file=file, origin=Origin.INGEST, replace=True)


def test_concurrent_replaces_of_one_file_leave_one_version(
    tmp_path: Path, ingest_engine: FaceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three writers replace /x.jpg with different photos, many times at once. Without a per-file lock they all
    read the old ids before any upserts, and several versions' faces stay; with it, exactly one remains."""
    with workspace(tmp_path, ingest_engine) as ws:
        find_ids = ws.store.find_ids

        def slow_find_ids(query: PointQuery) -> list[str]:
            # The real store, with the window between reading a file's ids and writing widened, as a busy
            # machine may widen it (Qdrant Edge's calls run too fast here for threads to interleave in them).
            ids = find_ids(query)
            time.sleep(0.01)
            return ids

        monkeypatch.setattr(ws.store, "find_ids", slow_find_ids)
        versions = [item(Photos.yaoming, "/x.jpg"), item(Photos.tom_hanks, "/x.jpg"), item(Photos.t1, "/x.jpg")]
        faces = [ingest_engine.analyze_batch([v.image])[0] for v in versions]
        prepared = [
            [ws.service.prepare_points([v], [f]) for _ in range(30)] for v, f in zip(versions, faces, strict=True)
        ]
        barrier = threading.Barrier(3)

        def writer(k: int) -> None:
            for points, results in prepared[k]:
                barrier.wait()
                ws.service.write_points(points, results)

        with ThreadPoolExecutor(3) as pool:
            for f in [pool.submit(writer, k) for k in range(3)]:
                f.result()
        stored = set(ws.store.ids_for_file("/x.jpg"))
        expected = [set(results[0].ids) for (_, results) in (p[0] for p in prepared)]
        assert stored in expected, f"{len(stored)} faces stored for one file: versions mixed"
        assert ws.thumbs() == stored  # every stored face has its thumbnail, and no other thumbnail is left
        for p in prepared:
            for _, results in p[1:]:
                ws.service.abandon(results)


def test_ingest_api_writes_deletes_and_searches_at_once(tmp_path: Path, ingest_engine: FaceEngine) -> None:
    photos = face_folder(tmp_path / "photos", 12)
    with workspace(tmp_path / "state", ingest_engine) as ws:
        job = ws.job(tmp_path / "photos", batch=4)
        sources = face_folder(tmp_path / "uploads", 8, nested=False, start=100)  # other bytes than the folder's
        uploads = [item(path, f"upload{k}.jpg") for k, path in enumerate(sources)]
        for u in uploads:
            u.origin, u.replace = Origin.UPLOAD, False
        stop = threading.Event()
        searched = []

        def api() -> None:
            for k, u in enumerate(uploads):
                ws.service.index([u])
                if k % 2:
                    ws.service.delete_where(PointQuery(file=u.file))

        def search() -> None:
            query = item(Photos.yaoming, "q")
            while not stop.is_set():
                searched.append(len(ws.service.search([query.image])[0]))

        with ThreadPoolExecutor(3) as pool:
            running = [pool.submit(job.run), pool.submit(api)]
            searching = pool.submit(search)
            for f in running:
                f.result()
            stop.set()
            searching.result()
        assert searched and all(n == 1 for n in searched)
        for path in photos:  # every ingested file has its face, with its thumbnail
            ids = ws.store.ids_for_file(str(path))
            assert len(ids) == 1 and ids[0] in ws.thumbs()
        kept = {u.file for k, u in enumerate(uploads) if not k % 2}
        for u in uploads:
            assert bool(ws.store.ids_for_file(u.file)) == (u.file in kept)
        assert ws.thumbs() == ws.ids()  # nothing erased is left, nothing stored lacks its thumbnail
