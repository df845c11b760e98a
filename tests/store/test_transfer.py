"""Collections move: export -> import round trips, resumable migration, refusals.

The "server" side is qdrant-client's local mode (QdrantClient(path=...) or ":memory:"), standing in for a Qdrant
server or cluster: no server can run on this machine, and local mode speaks the same client API, so ServerStore runs the
same code path it runs against a server (local mode ignores shards, replicas, HNSW and quantization).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.cli import collection as cli
from app.config import Settings
from app.engine import resolve_pack
from app.errors import PackMismatch
from app.store import CollectionSpec, EdgeStore, FacePoint, ServerStore, VectorStore
from app.store.model import iter_pages
from app.store.transfer import (
    MANIFEST,
    copy_points,
    export_collection,
    import_collection,
    read_manifest,
    verify_copy,
)
from tests.support import free_port

DIM = 64
SPEC = CollectionSpec(name="faces", dim=DIM, pack="test-pack:abc", index_threshold=0)


def points(n: int, seed: int = 0) -> list[FacePoint]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [
        FacePoint(
            str(uuid.UUID(int=int(rng.integers(2**62)) << 64 | i)),
            v,
            {
                "file": f"/photos/é{i // 3}.jpg",
                "face_index": i % 3,
                "subject": f"p{i % 7}",
                "origin": "ingest" if i % 2 else "upload",
            },
        )
        for i, v in enumerate(x)
    ]


def everything(store: VectorStore) -> dict[str, FacePoint]:
    return {p.id: p for page in iter_pages(store) for p in page.points}


@pytest.fixture
def source(tmp_path: Path) -> Iterator[EdgeStore]:
    store = EdgeStore(tmp_path / "src" / "faces", SPEC)
    store.upsert(points(1200))
    yield store
    store.close()


def test_export_import_round_trip_edge_and_server(source: EdgeStore, tmp_path: Path) -> None:
    manifest = export_collection(source, tmp_path / "export", chunk_points=500)
    assert manifest.points == 1200 and len(manifest.chunks) == 3
    on_disk = json.loads((tmp_path / "export" / MANIFEST).read_text())
    assert on_disk["format"] == "oceano-collection" and on_disk["pack"] == SPEC.pack
    assert on_disk["build"]["hnsw_m"] == SPEC.hnsw_m
    original = everything(source)

    edge = EdgeStore(tmp_path / "dst" / "faces", SPEC)
    assert import_collection(tmp_path / "export", edge) == 1200
    copied = everything(edge)
    assert copied.keys() == original.keys()
    for pid, p in original.items():
        assert copied[pid].payload == p.payload
        assert np.array_equal(copied[pid].vector, p.vector)  # originals compare exactly
    edge.close()

    server = ServerStore(QdrantClient(location=":memory:"), SPEC)
    import_collection(tmp_path / "export", server)
    copied = everything(server)
    assert copied.keys() == original.keys()
    for pid, p in original.items():
        assert copied[pid].payload == p.payload
        # Cosine collections normalise vectors on write (server and local mode): equal to float32 rounding.
        np.testing.assert_allclose(copied[pid].vector, p.vector, atol=1e-6)
    # ... and back out of the server: the same points again
    back = export_collection(server, tmp_path / "export2", chunk_points=500)
    assert back.points == 1200 and back.pack == SPEC.pack
    server.close()


def test_import_refuses_another_pack(source: EdgeStore, tmp_path: Path) -> None:
    export_collection(source, tmp_path / "export")
    other = EdgeStore(tmp_path / "other" / "faces", CollectionSpec(name="faces", dim=DIM, pack="another:def"))
    with pytest.raises(PackMismatch, match="another:def"):
        import_collection(tmp_path / "export", other)
    assert other.count() == 0
    other.close()


def test_damaged_export_is_refused(source: EdgeStore, tmp_path: Path) -> None:
    export_collection(source, tmp_path / "export", chunk_points=500)
    target = EdgeStore(tmp_path / "dst" / "faces", SPEC)
    jsonl = tmp_path / "export" / "points-00001.jsonl"
    jsonl.write_text(jsonl.read_text().replace("p1", "p9", 1))
    with pytest.raises(Exception, match="checksum"):
        import_collection(tmp_path / "export", target)
    target.close()


def test_migrate_resumes_after_an_interruption(source: EdgeStore, tmp_path: Path) -> None:
    client = QdrantClient(path=str(tmp_path / "local-qdrant"))  # standing in for the server
    target = ServerStore(client, SPEC)
    checkpoint = tmp_path / "migrate.json"

    def killed_after_two_pages(copied: int) -> None:
        if copied >= 600:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        copy_points(source, target, checkpoint, page=300, on_page=killed_after_two_pages)
    state = json.loads(checkpoint.read_text())
    assert state["copied"] == 600 and state["offset"] and not state["done"]
    assert target.count() == 600

    report = copy_points(source, target, checkpoint, page=300)
    assert report.resumed_from == state["offset"] and report.copied == 600
    report = verify_copy(source, target, report, samples=30)
    assert report.verified and report.source_count == report.target_count == 1200
    assert report.samples >= 20 and report.overlap_at_10 > 0.9
    assert everything(target).keys() == everything(source).keys()
    assert copy_points(source, target, checkpoint).resumed_from == "done"  # a finished copy is not redone
    target.close()


class _FakeService(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"status": "healthy", "ready": True, "checks": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "state" / "qdrant"))
    monkeypatch.setenv("QDRANT_URL", "")
    monkeypatch.setenv("PORT", str(free_port()))
    monkeypatch.setenv("COLLECTION_NAME", "faces")
    return Settings()


def test_cli_export_import_and_refusals(
    env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = resolve_pack(env).fingerprint  # the pack the service would load: imports are checked against it
    store = EdgeStore(env.qdrant_path / "faces", CollectionSpec(name="faces", dim=DIM, pack=pack))
    store.upsert(points(1200))
    store.close()
    assert cli.main(["export", str(tmp_path / "out")]) == 0
    assert read_manifest(tmp_path / "out").points == 1200

    monkeypatch.setenv("COLLECTION_NAME", "faces2")
    monkeypatch.setenv("HNSW_M", "24")  # the new collection is built with the current settings
    assert cli.main(["import", str(tmp_path / "out")]) == 0
    assert "imported 1200 points" in capsys.readouterr().out
    assert json.loads((env.qdrant_path / "faces2" / "oceano.json").read_text())["build"]["hnsw_m"] == 24

    # an export of another pack is refused, whatever the target
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    manifest["pack"] = "antelopev2:glintr100.onnx:0123"
    (tmp_path / "out" / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setenv("COLLECTION_NAME", "faces3")
    assert cli.main(["import", str(tmp_path / "out")]) == 1
    assert "different models" in capsys.readouterr().err
    assert not (env.qdrant_path / "faces3").exists()

    # while the service runs it owns the embedded store: the command refuses and says what to do
    server = HTTPServer(("127.0.0.1", env.port), _FakeService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("COLLECTION_NAME", "faces")
        assert cli.main(["export", str(tmp_path / "out2")]) == 1
        err = capsys.readouterr().err
        assert "is running and owns the embedded store" in err and "stop it" in err
    finally:
        server.shutdown()


def test_cli_snapshot_and_restore_of_the_embedded_store(
    env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EdgeStore(env.qdrant_path / "faces", SPEC)
    store.upsert(points(300))
    store.close()
    assert cli.main(["snapshot", str(tmp_path / "snap")]) == 0
    monkeypatch.setenv("COLLECTION_NAME", "restored")
    assert cli.main(["restore", str(tmp_path / "snap")]) == 0
    restored = EdgeStore(env.qdrant_path / "restored", SPEC)
    assert restored.count() == 300
    found = restored.search(np.stack([p.vector for p in points(300)[:5]]), limit=1, threshold=None, hnsw_ef=64)
    assert [r[0].id for r in found] == [p.id for p in points(300)[:5]]
    restored.close()
