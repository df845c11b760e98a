"""Face quality through the real HTTP app (real models, real Qdrant Edge): every face of search, analyze and index
answers carries `quality`; indexing stores it in the payload; QUALITY_POLICY=flag marks faces under QUALITY_MIN,
refuse leaves them out and says why (a photo whose every face is refused is a 201 that says so, not an error);
stored-face listings show the score."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi.testclient import TestClient

from tests.support import Photos, read_bgr

Factory = Callable[..., TestClient]
QUALITY_KEYS = {"score", "size", "sharpness", "yaw", "pitch", "roll", "det_score", "flagged"}


def jpeg(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return bytes(data)


def blurred_yaoming() -> bytes:
    """Yao Ming blurred as a 112 px crop would be at sigma 6: its face scores 0 (sharpness far under the ramp)."""
    pixels = read_bgr(Photos.yaoming)
    return jpeg(cv2.GaussianBlur(pixels, (0, 0), sigmaX=6.0))


def index(client: TestClient, name: str, data: bytes, **form: str) -> dict[str, Any]:
    r = client.post("/api/faces", files={"file": (name, data)}, data=form)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def scores_of(client: TestClient, data: bytes) -> list[float]:
    r = client.post("/api/analyze", files={"file": ("p.jpg", data)}, params={"heads": ""})
    assert r.status_code == 200, r.text
    return [f["quality"]["score"] for f in r.json()["faces"]]


def test_search_analyze_and_index_answers_carry_quality(client: TestClient) -> None:
    indexed = index(client, "t1.jpg", Photos.t1.read_bytes())
    assert indexed["faces"] == len(indexed["ids"]) == len(indexed["detected"]) and indexed["refused"] == 0
    for face in indexed["detected"]:
        assert set(face["quality"]) == QUALITY_KEYS and 0 <= face["quality"]["score"] <= 1
        assert face["id"] in indexed["ids"] and face["refused"] is None
    searched = client.post("/api/search", files={"file": ("t1.jpg", Photos.t1.read_bytes())}).json()
    analyzed = client.post("/api/analyze", files={"file": ("t1.jpg", Photos.t1.read_bytes())}).json()
    gate = client.app.state.settings.quality_min  # type: ignore[attr-defined]
    for face in [*searched["faces"], *analyzed["faces"]]:
        assert set(face["quality"]) == QUALITY_KEYS and face["quality"]["flagged"] is (face["quality"]["score"] < gate)
    # The same photo, the same faces, the same quality, whichever route measured it.
    assert sorted(f["quality"]["score"] for f in searched["faces"]) == sorted(
        f["quality"]["score"] for f in indexed["detected"]
    )
    # The stored faces show their score.
    listed = client.get("/api/faces", params={"limit": 100}).json()["faces"]
    by_id = {f["id"]: f["quality"]["score"] for f in indexed["detected"]}
    assert {f["id"]: f["quality"] for f in listed} == by_id


def test_the_payload_holds_the_record(client: TestClient) -> None:
    indexed = index(client, "yaoming.jpg", Photos.yaoming.read_bytes())
    service = client.app.state.service  # type: ignore[attr-defined]
    (point,) = service.store.retrieve(indexed["ids"])
    (face,) = indexed["detected"]
    q = face["quality"]
    assert point.payload["quality"] == q["score"] and point.payload["quality_flagged"] is False
    assert point.payload["quality_detail"] == {
        "size": q["size"],
        "sharpness": q["sharpness"],
        "pose": {"yaw": q["yaw"], "pitch": q["pitch"], "roll": q["roll"]},
        "det_score": q["det_score"],
    }


def test_policy_flag_indexes_and_marks_the_faces_under_the_minimum(client_factory: Factory) -> None:
    client = client_factory(quality_min=0.5, quality_policy="flag")
    sharp, blurred = Photos.yaoming.read_bytes(), blurred_yaoming()
    assert scores_of(client, sharp)[0] >= 0.5 > scores_of(client, blurred)[0]
    good = index(client, "sharp.jpg", sharp)
    poor = index(client, "blurred.jpg", blurred)
    assert good["flagged"] == 0 and poor["flagged"] == 1 and poor["faces"] == 1 and poor["refused"] == 0
    assert poor["detected"][0]["quality"]["flagged"] is True and poor["message"] is None
    service = client.app.state.service  # type: ignore[attr-defined]
    flags = {m.payload["file"]: m.payload["quality_flagged"] for m in service.store.retrieve(good["ids"] + poor["ids"])}
    assert flags == {"sharp.jpg": False, "blurred.jpg": True}
    # A search shows the query face's flag too.
    (face,) = client.post("/api/search", files={"file": ("b.jpg", blurred)}).json()["faces"]
    assert face["quality"]["flagged"] is True
    # And a listing of stored faces (the people page marks them).
    listed = {f["file"]: f["quality_flagged"] for f in client.get("/api/faces").json()["faces"]}
    assert listed == {"sharp.jpg": False, "blurred.jpg": True}


def test_policy_refuse_does_not_index_and_says_why(client_factory: Factory) -> None:
    client = client_factory(quality_min=0.5, quality_policy="refuse")
    service = client.app.state.service  # type: ignore[attr-defined]
    good = index(client, "sharp.jpg", Photos.yaoming.read_bytes())
    assert good["faces"] == 1 and good["refused"] == 0 and service.face_count() == 1
    # Every face of the photo refused: a 201 that says so, nothing stored.
    poor = index(client, "blurred.jpg", blurred_yaoming(), subject="Yao")
    assert poor["ids"] == [] and poor["faces"] == 0 and poor["refused"] == 1
    (face,) = poor["detected"]
    assert face["id"] is None and "QUALITY_MIN 0.50" in face["refused"]
    assert f"quality {face['quality']['score']:.2f}" in face["refused"]
    assert "refused" in poor["message"]
    assert service.face_count() == 1  # unchanged
    assert client.get("/api/faces", params={"file": "blurred.jpg"}).json()["faces"] == []


def test_refuse_keeps_the_good_faces_of_a_photo(client_factory: Factory, tmp_path: Path) -> None:
    """A group photo with faces on both sides of QUALITY_MIN: the good ones are stored, under their usual ids."""
    probe = client_factory()
    scores = sorted(scores_of(probe, Photos.t1.read_bytes()))
    cut = round(next((a + b) / 2 for a, b in zip(scores, scores[1:], strict=False) if b - a > 0.05), 3)
    other = tmp_path / "refusing"  # a second service: a state of its own
    client = client_factory(
        quality_min=cut,
        quality_policy="refuse",
        state_dir=other,
        qdrant_path=other / "qdrant",
        thumbs_dir=other / "thumbs",
    )
    answer = index(client, "t1.jpg", Photos.t1.read_bytes())
    below = [f for f in answer["detected"] if f["quality"]["score"] < cut]
    assert below and answer["refused"] == len(below) and answer["faces"] == len(scores) - len(below)
    assert all(f["id"] is None and f["refused"] for f in below)
    assert client.app.state.service.face_count() == answer["faces"]  # type: ignore[attr-defined]
    # The same photo indexed with no gate stores the same ids for the good faces (ids by face index).
    everything = index(probe, "t1.jpg", Photos.t1.read_bytes())
    assert set(answer["ids"]) < set(everything["ids"])


def test_min_quality_matches_only_stored_faces_at_least_that_good(client_factory: Factory) -> None:
    client = client_factory(quality_min=0.5, quality_policy="flag")
    index(client, "sharp.jpg", Photos.yaoming.read_bytes(), subject="Yao")
    index(client, "blurred.jpg", blurred_yaoming(), subject="Yao")
    query = {"file": ("q.jpg", Photos.yaoming.read_bytes())}

    def matched(**params: Any) -> set[str]:
        r = client.post("/api/search", files=query, params={"top_k": 10, "threshold": -1, **params})
        assert r.status_code == 200, r.text
        (face,) = r.json()["faces"]
        return {m["file"] for m in face["matches"]}

    assert matched() == {"sharp.jpg", "blurred.jpg"}
    assert matched(min_quality=0.5) == {"sharp.jpg"}
    assert matched(min_quality=0.0) == {"sharp.jpg", "blurred.jpg"}  # 0 keeps every face with a score
    batch = client.post(
        "/api/search/batch", files=[("files", query["file"])], params={"min_quality": 0.5, "threshold": -1}
    ).json()
    assert {m["file"] for m in batch["results"][0]["faces"][0]["matches"]} == {"sharp.jpg"}
    page = client.post(
        "/search", files=query, params={"min_quality": 0.5, "threshold": -1}, headers={"Accept": "application/json"}
    ).json()
    assert {m["file"] for m in page["faces"][0]["matches"]} == {"sharp.jpg"}  # the page's form target too
    bad = client.post("/api/search", files=query, params={"min_quality": 2})
    assert bad.status_code == 422 and "min_quality" in bad.text
    # The same filter on a /ws frame's search, and quality on each face of its answer.
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        frame = {"frame": base64.b64encode(Photos.yaoming.read_bytes()).decode(), "settings": {}}
        for settings, files in (({}, {"sharp.jpg", "blurred.jpg"}), ({"min_quality": 0.5}, {"sharp.jpg"})):
            frame["settings"] = {"search": True, "top_k": 10, "threshold": -1, **settings}
            ws.send_json({"event": "process_frame", "data": frame})
            (face,) = ws.receive_json()["data"]["faces"]
            assert set(face["quality"]) == QUALITY_KEYS
            assert {m["file"] for m in face["matches"]} == files
        ws.send_json({"event": "process_frame", "data": {**frame, "settings": {"search": True, "min_quality": 3}}})
        error = ws.receive_json()
        assert error["event"] == "error" and "min_quality" in error["data"]["message"]
