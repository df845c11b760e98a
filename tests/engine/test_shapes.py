"""Bounded input shapes: through the real app (real models, real Qdrant Edge), a random mix of searches, batch
searches, analyses with heads, indexing, WebSocket frames and an ingest job reaches each ONNX session only at the
input shapes its model declares (OnnxModel.input_shapes), and every one of those ran once before the app answered.
On a GPU each new shape costs seconds (the convolution search): a shape outside the set is a stall in production.

Each session is wrapped in a recording proxy around the real one (ShapeRecorder), installed where the model base
creates its sessions, so the warm-up runs are recorded too."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import pytest
from fastapi.testclient import TestClient

import app.engine.model
from app.api import create_app
from app.engine import OnnxModel
from app.engine.runtime import create_session
from tests.support import LOOPBACK, NO_FACE, Photos, ShapeRecorder, b64, make_settings, read_bgr

SOURCES = (Photos.t1, Photos.players, Photos.gdp, Photos.yaoming, Photos.tom_hanks, NO_FACE)


def random_photo(rng: random.Random) -> bytes:
    """A real photo cut to a random aspect ratio and scaled to a random size (any shape a client may send)."""
    image = read_bgr(rng.choice(SOURCES))
    h, w = image.shape[:2]
    crop_w, crop_h = rng.randint(w // 2, w), rng.randint(h // 2, h)
    left, top = rng.randint(0, w - crop_w), rng.randint(0, h - crop_h)
    image = image[top : top + crop_h, left : left + crop_w]
    side = rng.randint(90, 1400)
    factor = side / max(image.shape[:2])
    image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return bytes(cv2.imencode(".jpg", image)[1])


@pytest.fixture(params=["cpu", "gpu_layout", "gpu_layout_two_sizes"])
def recorded_client(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The real app with every ONNX session recorded. `gpu_layout`: the models are told they run on a GPU (a
    stand-in for one: onnxruntime here has only the CPU provider), so they take the GPU's layout: one detector
    canvas, detector batches, padded last chunks, the GPU's default batch sizes. `gpu_layout_two_sizes`: the same
    with two batch sizes for the detector and the recognizer (a session for each)."""
    sizes: dict[str, Any] = {}
    if request.param.startswith("gpu_layout"):
        monkeypatch.setattr(app.engine.model, "uses_gpu", lambda session: True)
    if request.param == "gpu_layout_two_sizes":
        sizes = {"det_batch_sizes": (4, 16), "rec_batch_sizes": (16, 64)}

    def recorded(*args: Any, **kwargs: Any) -> Any:
        return ShapeRecorder(create_session(*args, **kwargs))

    monkeypatch.setattr(app.engine.model, "create_session", recorded)
    (tmp_path / "ingest").mkdir()
    # a generous wait: shedding is not what is tested (the GPU layout pads, slow on this CPU)
    settings = make_settings(
        tmp_path / "state", ingest_roots=str(tmp_path / "ingest"), request_batch=8, gpu_acquire_timeout=120, **sizes
    )
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        yield client


def session_models(client: TestClient) -> dict[str, OnnxModel]:
    services = client.app.state.services  # type: ignore[attr-defined]
    heads = {e.spec.name: e.head for e in services.heads.listings() if e.head is not None}
    return {**services.engine.models, **heads}


def recorders(model: OnnxModel) -> list[ShapeRecorder]:
    """The model's sessions (one per batch size on a GPU with several, else one), each recorded."""
    sessions = model.sessions
    assert all(isinstance(s, ShapeRecorder) for s in sessions), "every session is created through the model base"
    return sessions


def recorded_shapes(model: OnnxModel) -> list[tuple[int, ...]]:
    return [shape for recorder in recorders(model) for shape in recorder.shapes]


def test_only_declared_shapes_reach_the_sessions(recorded_client: TestClient, tmp_path: Path) -> None:
    client = recorded_client
    models = session_models(client)
    assert {"detector", "recognizer", "emotion"} <= set(models)
    for name, model in models.items():
        declared = set(model.input_shapes())
        assert len(declared) <= 16, (name, declared)  # a small set (the CPU detector: 7 aspects at 2 sizes)
        # the warm-up ran every declared shape before the app answered anything
        assert set(recorded_shapes(model)) == declared, name
        for recorder in recorders(model):
            recorder.shapes.clear()

    rng = random.Random(15)
    for i in range(6):
        (tmp_path / "ingest" / f"photo{i}.jpg").write_bytes(random_photo(rng))

    def search(k: int) -> None:
        local = random.Random(k)
        heads = local.choice(["", "emotion"])
        files = {"file": ("q.jpg", random_photo(local), "image/jpeg")}
        assert client.post("/api/search", files=files, params={"heads": heads}).status_code == 200

    def batch_search(k: int) -> None:
        local = random.Random(1000 + k)
        files = [("files", (f"q{j}.jpg", random_photo(local), "image/jpeg")) for j in range(local.randint(2, 5))]
        assert client.post("/api/search/batch", files=files).status_code == 200

    def analyze(k: int) -> None:
        local = random.Random(2000 + k)
        files = {"file": ("a.jpg", random_photo(local), "image/jpeg")}
        assert client.post("/api/analyze", files=files, params={"heads": "emotion"}).status_code == 200

    def index(k: int) -> None:
        local = random.Random(3000 + k)
        files = {"file": ("i.jpg", random_photo(local), "image/jpeg")}
        assert client.post("/api/faces", files=files).status_code in (201, 422)  # 422: no face in the cut

    calls = [search] * 14 + [batch_search] * 4 + [analyze] * 5 + [index] * 4
    rng.shuffle(calls)
    with ThreadPoolExecutor(4) as pool:  # concurrent requests: the request batcher merges them
        for future in [pool.submit(call, k) for k, call in enumerate(calls)]:
            future.result()

    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["event"] == "connected"
        for k in range(5):
            settings = {"max_side": rng.choice([160, 320, 480, 640, 900]), "heads": rng.choice([[], ["emotion"]])}
            frame = random_photo(rng)
            ws.send_json(
                {"event": "process_frame", "data": {"frame": b64(frame), "timestamp": k, "settings": settings}}
            )
            assert ws.receive_json()["event"] == "detection_result"
        ws.send_json({"command": "predict", "image": b64(random_photo(rng))})
        assert ws.receive_json()["type"] == "prediction"

    job = client.post("/api/ingest", json={"path": str(tmp_path / "ingest")}).json()
    deadline = time.monotonic() + 120
    while (body := client.get(f"/api/jobs/{job['id']}").json())["status"] not in {"completed", "failed"}:
        assert time.monotonic() < deadline, f"ingest job stuck in {body['status']}"
        time.sleep(0.05)
    assert body["status"] == "completed" and body["counts"]["seen"] == 6

    strays = {}
    for name, model in models.items():
        seen = recorded_shapes(model)
        assert seen, f"{name} never ran"
        if outside := set(seen) - set(model.input_shapes()):
            strays[name] = sorted(outside)
    assert not strays, f"input shapes outside the declared sets: {strays}"
    # On a GPU one shape per session (onnxruntime's CUDA provider pays a shape's first-run cost again whenever a
    # session's input shape changes); with two sizes, both ran under this mix.
    for name, model in models.items():
        if model.on_gpu:
            assert all(len(set(r.shapes)) == 1 for r in recorders(model)), (
                name,
                [set(r.shapes) for r in recorders(model)],
            )
            assert len(recorders(model)) == len(model.batch_sizes), name
    if models["detector"].on_gpu and len(models["detector"].batch_sizes) == 2:
        assert {s[0] for s in recorded_shapes(models["detector"])} == {4, 16}
        assert {s[0] for s in recorded_shapes(models["recognizer"])} == {16, 64}

    runtime = client.get("/status").json()["runtime"]
    assert runtime["batch_sizes"] == {
        "detector": list(models["detector"].batch_sizes),
        "recognizer": list(models["recognizer"].batch_sizes),
    }
    assert runtime["head_batch_sizes"]["emotion"] == list(models["emotion"].batch_sizes)
    assert runtime["providers"] == ["CPUExecutionProvider"] and runtime["warm_up_s"] > 0
