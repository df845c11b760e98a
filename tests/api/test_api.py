"""The real HTTP app (TestClient runs the lifespan): real models, real Qdrant Edge under a tmp STATE_DIR."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.errors import PackMismatch
from tests.support import VECTRON_DIR, gate_held, no_face_jpeg


def upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "application/octet-stream")}


def test_index_then_search_finds_the_same_person(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/faces", files=upload(photos.players), data={"subject": "team"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["faces"] >= 15 and body["file"] == "players.jpg"
    r = client.post("/api/search", files=upload(photos.yaoming), params={"top_k": 3})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["model"] == "bundled" and result["took_ms"] > 0
    (face,) = result["faces"]
    assert len(face["bbox"]) == 4 and 0.5 < face["det_score"] <= 1
    top, second = face["matches"][0], face["matches"][1]
    assert top["file"] == "players.jpg" and top["subject"] == "team" and top["id"] in body["ids"]
    assert top["score"] > 0.45 and top["score"] - second["score"] > 0.25
    assert top["thumb_url"] == f"/thumbs/{top['id']}"
    thumb = client.get(top["thumb_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (128, 128)
    # threshold override drops everyone but the match
    r = client.post("/api/search", files=upload(photos.yaoming), params={"threshold": 0.4})
    assert [m["id"] for m in r.json()["faces"][0]["matches"]] == [top["id"]]


def test_reindexing_the_same_image_changes_nothing(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    first = client.post("/api/faces", files=upload(photos.t1)).json()
    second = client.post("/api/faces", files=upload(photos.t1)).json()
    assert first["ids"] == second["ids"] and len(first["ids"]) == 6
    assert client.get("/status").json()["vectors"] == 6


def test_source_field_names_the_file_and_delete_by_file(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    ids = client.post("/api/faces", files=upload(photos.t1), data={"source": "/albums/party.jpg"}).json()["ids"]
    client.post("/api/faces", files=upload(photos.yaoming))
    r = client.delete("/api/faces", params={"file": "/albums/party.jpg"})
    assert r.status_code == 200 and sorted(r.json()["deleted"]) == sorted(ids)
    assert client.get(f"/thumbs/{ids[0]}").status_code == 404
    assert client.get("/status").json()["vectors"] == 1
    again = client.delete("/api/faces", params={"file": "/albums/party.jpg"})  # answered as the erasure was
    assert again.status_code == 200 and sorted(again.json()["deleted"]) == sorted(ids)
    assert client.delete("/api/faces", params={"file": "/albums/never.jpg"}).status_code == 404


def test_delete_one_face(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    ids = client.post("/api/faces", files=upload(photos.t1)).json()["ids"]
    assert client.delete(f"/api/faces/{ids[0]}").status_code == 200
    assert client.get(f"/thumbs/{ids[0]}").status_code == 404
    assert client.get(f"/thumbs/{ids[1]}").status_code == 200
    assert client.get("/status").json()["vectors"] == 5
    assert client.delete(f"/api/faces/{ids[0]}").json()["deleted"] == [ids[0]]  # a retry: answered the same
    assert client.delete("/api/faces/00000000-0000-4000-8000-000000000000").status_code == 404  # never stored
    assert client.delete("/api/faces/not-a-uuid").status_code == 404


def test_no_face_is_an_empty_answer(client: TestClient) -> None:
    r = client.post("/api/search", files={"file": ("plain.jpg", no_face_jpeg(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["faces"] == []


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"just some text, not a picture", 415, "not an image"),
        (b"", 400, "empty"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 20, 400, "corrupt or truncated"),
        (b"GIF89a" + b"\x00" * 10, 400, "corrupt or truncated"),
    ],
)
def test_rejected_inputs(client: TestClient, payload: bytes, status: int, message: str) -> None:
    r = client.post("/api/search", files={"file": ("x.jpg", payload, "image/jpeg")})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert client.get("/health").json()["ready"] is True  # the process is fine


def test_missing_file_field_and_bad_parameters(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/search", data={"nothing": "here"})
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    r = client.post("/api/search", files=upload(photos.yaoming), params={"top_k": 0})
    assert r.status_code == 422 and "top_k" in r.json()["detail"]
    r = client.post("/api/search", files=upload(photos.yaoming), params={"threshold": 2})
    assert r.status_code == 422 and "threshold" in r.json()["detail"]


def test_too_large_and_bomb(client_factory: Callable[..., TestClient], photos) -> None:  # type: ignore[no-untyped-def]
    client = client_factory(max_upload_mb=0.05)
    r = client.post("/api/search", files=upload(photos.players))  # ~370 KB
    assert r.status_code == 413 and "MB limit" in r.json()["detail"]
    client = client_factory(collection_name="other")
    buf = io.BytesIO()
    Image.new("L", (9000, 6000), 0).save(buf, format="PNG")  # 54 MP in a few KB
    r = client.post("/api/search", files={"file": ("bomb.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "megapixel" in r.json()["detail"]


def test_health_and_status(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {
        "status": "healthy",
        "ready": True,
        "checks": {"model_loaded": True, "qdrant_healthy": True, "shutdown_initiated": False},
        "index_building": False,
        "unindexed": 0,
    }
    status = client.get("/status").json()
    assert status["collection"] == "faces" and status["vectors"] == 0 and status["status"] == "green"
    assert status["model"] == "bundled" and status["backend"] == "edge"
    assert "oceano_collection_vectors 0" in client.get("/metrics").text
    assert client.get("/docs").status_code == 200
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_health_unhealthy_after_store_closes(client: TestClient) -> None:
    client.app.state.service.store.close()  # type: ignore[attr-defined]
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["checks"]["qdrant_healthy"] is False
    r = client.post("/api/search", files={"file": ("plain.jpg", no_face_jpeg(), "image/jpeg")})
    assert r.status_code == 200  # no face: the store is not needed
    status = client.get("/status")
    assert status.status_code == 503 and "closed" in status.json()["detail"]


def test_thumbs_reject_traversal(client: TestClient) -> None:
    # HTTP level only: the router refuses these before the store sees them (ThumbnailStore.validate_id, the check
    # that keeps ids inside THUMBS_DIR, is tested in tests/store/test_thumbs.py).
    for bad in ("..%2F..%2Fetc%2Fpasswd", "..%2Fqdrant", "00000000-0000-0000-0000-000000000000"):
        assert client.get(f"/thumbs/{bad}").status_code == 404


def test_html_page_and_content_negotiation(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/")
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text and "bundled" in page.text
    client.post("/api/faces", files=upload(photos.players))
    html = client.post("/search", files=upload(photos.yaoming))
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "1 face found" in html.text and "/thumbs/" in html.text and "data:image/jpeg;base64," in html.text
    js = client.post("/search", files=upload(photos.yaoming), headers={"Accept": "application/json"})
    assert js.headers["content-type"] == "application/json" and js.json()["faces"][0]["matches"]
    bad = client.post("/search", files={"file": ("x.txt", b"hello", "text/plain")})
    assert bad.status_code == 415 and "not an image" in bad.text and "<html" in bad.text
    assert client.get("/static/app.js").status_code == 200


def test_batch_search(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/faces", files=upload(photos.players))
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in (photos.yaoming, photos.t1)]
    files.append(("files", ("bad.txt", b"nope", "text/plain")))
    r = client.post("/api/search/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["faces"]) for x in results] == [1, 6, 0]
    assert results[2]["error"] and "not an image" in results[2]["error"]
    assert results[0]["faces"][0]["matches"][0]["file"] == "players.jpg"


def test_busy_engine_answers_503_with_retry_after(client_factory: Callable[..., TestClient], photos) -> None:  # type: ignore[no-untyped-def]
    client = client_factory(gpu_acquire_timeout=0.2)
    with gate_held(client.app.state.service.engine.gate):  # type: ignore[attr-defined]
        r = client.post("/api/search", files=upload(photos.yaoming))
        assert r.status_code == 503 and "busy" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) >= 1
    assert client.post("/api/search", files=upload(photos.yaoming)).status_code == 200


def test_other_model_pack_is_refused_at_start(
    client_factory: Callable[..., TestClient],
    photos,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    client = client_factory()
    client.post("/api/faces", files=upload(photos.t1))
    client.__exit__(None, None, None)
    # A second pack (real ONNX files under antelopev2 names): its fingerprint differs from the bundled one.
    root = tmp_path / "models"
    (root / "antelopev2").mkdir(parents=True)
    os.symlink(VECTRON_DIR / "scrfd_500m_bnkps.onnx", root / "antelopev2" / "scrfd_10g_bnkps.onnx")
    os.symlink(VECTRON_DIR / "w600k_mbf.onnx", root / "antelopev2" / "glintr100.onnx")
    with pytest.raises(PackMismatch, match="COLLECTION_NAME"):
        client_factory(model_root=root)
    # ... while a new collection name for the new pack works, and the old one still opens with its pack.
    other = client_factory(model_root=root, collection_name="faces_antelopev2")
    assert other.get("/status").json()["model"] == "antelopev2"
    other.__exit__(None, None, None)
    again = client_factory()
    assert again.get("/status").json()["vectors"] == 6


def test_concurrent_searches_share_engine_batches(client: TestClient, photos) -> None:  # type: ignore[no-untyped-def]
    """Requests queued while the engine is busy run as one engine call, and each gets its own answer."""
    client.post("/api/faces", files=upload(photos.players))
    services = client.app.state.services  # type: ignore[attr-defined]
    before = services.batcher.batches
    answers: dict[str, dict] = {}

    def search(path: Path) -> None:
        answers[path.name] = client.post("/api/search", files=upload(path)).json()

    threads = [threading.Thread(target=search, args=(p,)) for p in (photos.yaoming, photos.t1, photos.tom_hanks)]
    with gate_held(services.engine.gate):
        for t in threads:
            t.start()
        deadline = time.time() + 4  # within GPU_ACQUIRE_TIMEOUT
        while services.batcher.queued < 3 and time.time() < deadline:
            time.sleep(0.02)
    for t in threads:
        t.join()
    assert services.batcher.batches - before == 1
    assert len(answers["yaoming.jpg"]["faces"]) == 1 and len(answers["t1.jpg"]["faces"]) == 6
    assert answers["yaoming.jpg"]["faces"][0]["matches"][0]["file"] == "players.jpg"
