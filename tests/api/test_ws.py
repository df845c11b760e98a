"""/ws over a real WebSocket (Starlette's test client runs the app and its lifespan): real models, real photos.
Both envelopes, every command, errors that leave the socket usable, back-pressure, the connection limit, alerts
and their cool-down, admission control."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from tests.support import Photos, b64, gate_held, no_face_jpeg, one_face_frame

EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # the head's labels
# The emotion service's numbering, which its clients keep predictions by: from 1, in this order.
EMOTION_SERVICE_IDS = {"angry": 1, "disgust": 2, "fear": 3, "happy": 4, "neutral": 5, "sad": 6, "surprise": 7}
Factory = Callable[..., TestClient]


def frame_event(image: bytes | Any, **settings: Any) -> dict[str, Any]:
    return {"event": "process_frame", "data": {"frame": b64(image), "timestamp": 1234, "settings": settings}}


def receive(ws: WebSocketTestSession, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = ws.receive_json()
        if message.get("event") not in skip:
            return message


def assert_usable(ws: WebSocketTestSession) -> None:
    ws.send_json({"command": "ping"})
    assert receive(ws) == {"type": "pong", "status": "success", "timestamp": pytest.approx(time.time(), abs=30)}


def area(box: list[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: list[float], b: list[float]) -> float:
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    return inter / (area(a) + area(b) - inter)


def connect(client: TestClient) -> WebSocketTestSession:
    ws = client.websocket_connect("/ws")
    hello = ws.__enter__().receive_json()
    assert hello["event"] == "connected"
    return ws


def test_connected_and_the_emotion_service_commands(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["event"] == "connected"
        data = hello["data"]
        assert len(data["client_id"]) == 32 and abs(data["server_time"] - time.time() * 1000) < 60_000
        assert data["model"] == "bundled" and "emotion" in data["heads"] and data["default_heads"] == ["emotion"]

        ws.send_json({"command": "emotions"})
        answer = ws.receive_json()
        assert answer["type"] == "emotions" and answer["status"] == "success"
        assert {e["name"]: e["id"] for e in answer["emotions"]} == EMOTION_SERVICE_IDS
        assert [e["id"] for e in answer["emotions"]] == list(range(1, 8)) and all(
            e["description"] for e in answer["emotions"]
        )
        ws.send_json({"command": "model_info"})
        info = ws.receive_json()
        assert info["type"] == "model_info" and info["status"] == "success"
        assert info["info"]["status"] == "loaded" and info["info"]["num_classes"] == 7
        assert info["info"]["input_shape"][1:] == [64, 64, 1] and info["info"]["total_params"] > 50_000
        assert info["info"]["model_version_tag"].startswith("emotion-")

        ws.send_json({"command": "health"})
        health = ws.receive_json()
        assert health == {**health, "type": "health", "status": "healthy", "service": "oceano", "clients_connected": 1}
        ws.send_json({"event": "get_stats", "data": {}})
        stats = ws.receive_json()
        assert stats["event"] == "stats" and stats["data"]["active_connections"] == 1


def test_predict_answers_the_largest_face_and_no_face_is_an_error(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json({"command": "predict", "image": b64(Photos.yaoming)})
        answer = ws.receive_json()
        assert answer["type"] == "prediction" and answer["status"] == "success", answer
        assert EMOTION_SERVICE_IDS[answer["emotion_name"]] == answer["emotion_id"]
        assert 0 < answer["confidence"] <= 1 and answer["confidence"] == max(answer["scores"].values())
        assert answer["faces"] == 1 and answer["processing_time_ms"] > 0
        assert answer["model_version_tag"].startswith("emotion-") and answer["timestamp"] > 1.6e9

        ws.send_json({"command": "predict", "image": b64(Photos.t1)})  # six faces: the largest one answers
        crowd = ws.receive_json()
        assert crowd["status"] == "success" and crowd["faces"] == 6
        ws.send_json({"event": "process_frame", "data": {"frame": b64(Photos.t1)}})
        boxes = [f["bbox"] for f in ws.receive_json()["data"]["faces"]]
        # predict detects on the image reduced to PREDICT_MAX_SIDE (320); its box is the largest face's
        assert max(boxes, key=area) == max(boxes, key=lambda b: iou(b, crowd["bbox"]))
        assert iou(max(boxes, key=area), crowd["bbox"]) > 0.8

        ws.send_json({"command": "predict", "image": b64(no_face_jpeg())})
        none = ws.receive_json()
        assert none["type"] == "prediction" and none["status"] == "error" and none["code"] == "no_face"
        assert "no face" in none["error"]
        assert_usable(ws)


def test_process_frame_event_and_command_alias(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json(frame_event(Photos.t1))
        result = ws.receive_json()
        assert result["event"] == "detection_result"
        data = result["data"]
        assert len(data["faces"]) == 6
        for face in data["faces"]:
            assert len(face["bbox"]) == 4 and 0.5 <= face["confidence"] <= 1 and "matches" not in face
            assert face["emotion"]["label"] in EMOTIONS
            assert face["emotion"]["confidence"] == face["emotion"]["scores"][face["emotion"]["label"]]
        assert data["crowd_analysis"] == {"face_count": 6, "crowd_level": "high", "density_score": 0.3}
        assert data["frames_dropped"] == 0 and data["processing_time"] > 0 and data["timestamp"] == 1234
        assert data["frame_id"] == 1 and data["alerts"] == [] and data["heads"] == ["emotion"]

        ws.send_json(
            {
                "command": "process_frame",
                "frame": b64(Photos.yaoming),
                "settings": {"heads": [], "confidence_threshold": 0.3},
            }
        )
        alias = ws.receive_json()
        assert alias["event"] == "detection_result" and alias["data"]["frame_id"] == 2
        (face,) = alias["data"]["faces"]
        assert "emotion" not in face and alias["data"]["crowd_analysis"]["crowd_level"] == "low"
        # confidence_threshold drops the faces the detector scored lower
        ws.send_json(frame_event(Photos.t1, confidence_threshold=0.99))
        assert len(ws.receive_json()["data"]["faces"]) < 6
        # max_side: detected on a smaller copy, boxes still in the frame's pixels
        ws.send_json(frame_event(Photos.t1, max_side=320, heads=[]))
        small = ws.receive_json()["data"]
        assert len(small["faces"]) == 6 and small["frame_size"] == [1280, 886]
        assert all(max(iou(f["bbox"], g["bbox"]) for g in data["faces"]) > 0.7 for f in small["faces"])


def test_process_frame_with_search_names_the_closest_match(client: TestClient) -> None:
    r = client.post(
        "/api/faces", files={"file": ("players.jpg", Photos.players.read_bytes())}, data={"subject": "Yao Ming"}
    )
    assert r.status_code == 201, r.text
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json(frame_event(one_face_frame(), search=True, top_k=2))
        (face,) = ws.receive_json()["data"]["faces"]
        top, second = face["matches"]
        assert top["subject"] == "Yao Ming" and top["file"] == "players.jpg" and top["score"] > 0.45
        assert top["score"] > second["score"] and top["thumb_url"] == f"/thumbs/{top['id']}"
        # Who the face is, as /api/search says it for the same photo: identity, each match's decision, a ref.
        searched = client.post("/api/search", params={"top_k": 2}, files={"file": ("f.jpg", one_face_frame())})
        (http_face,) = searched.json()["faces"]
        assert face["identity"]["subject"] == "Yao Ming" and face["identity"]["same_person"] is True
        assert face["identity"] == http_face["identity"]
        assert [m["same_person"] for m in face["matches"]] == [m["same_person"] for m in http_face["matches"]]
        assert top["same_person"] is True and face["ref"] == http_face["ref"]
        ws.send_json(frame_event(one_face_frame(), heads=[]))  # without search: no matches, no identity
        assert not {"matches", "identity", "ref"} & set(ws.receive_json()["data"]["faces"][0])


def test_errors_keep_the_socket_open_and_usable(client_factory: Factory) -> None:
    client = client_factory(max_upload_mb=0.05)  # 52 KB: yaoming.jpg (21 KB) fits, t1.jpg (129 KB) does not
    truncated = Photos.yaoming.read_bytes()[:4000]
    cases: list[tuple[str | dict[str, Any], str]] = [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ({"hello": "world"}, "bad_message"),
        ({"command": "dance"}, "unknown_command"),
        ({"event": "dance", "data": {}}, "unknown_event"),
        ({"event": "process_frame", "data": {"frame": "not base64!!"}}, "bad_base64"),
        ({"event": "process_frame", "data": {}}, "invalid_request"),
        (frame_event(Photos.t1), "too_large"),
        (frame_event(b"just some text, not an image at all"), "unsupported_media_type"),
        (frame_event(truncated), "bad_image"),
        (frame_event(Photos.yaoming, top_k=0), "invalid_request"),
        (frame_event(Photos.yaoming, heads=["nope"]), "no_such_head"),
    ]
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        for message, code in cases:
            if isinstance(message, str):
                ws.send_text(message)
            else:
                ws.send_json(message)
            answer = ws.receive_json()
            assert answer["event"] == "error" and answer["data"]["code"] == code, (message, answer)
            assert answer["data"]["message"] and isinstance(answer["data"]["details"], dict)
            assert_usable(ws)
        ws.send_text("x" * (client.app.state.settings.max_frame_chars + 70_000))  # refused before parsing
        assert ws.receive_json()["data"]["code"] == "too_large"
        ws.send_bytes(b"\xff\xd8\xff")
        assert ws.receive_json()["data"]["code"] == "bad_message"
        # A command's error also speaks the emotion service's shape.
        ws.send_json({"command": "predict", "image": "%%%"})
        answer = ws.receive_json()
        assert answer["data"]["code"] == "bad_base64"
        assert answer["type"] == "prediction" and answer["status"] == "error" and "base64" in answer["error"]
        # And the socket still does real work, with the failures told once as an alert.
        ws.send_json(frame_event(Photos.yaoming))
        result = ws.receive_json()["data"]
        assert len(result["faces"]) == 1
        (alert,) = result["alerts"]
        assert alert["type"] == "processing_error" and alert["level"] == "error"
        assert alert["details"]["failed_frames"] >= 4


def test_a_burst_of_frames_is_thinned_not_queued(client: TestClient) -> None:
    frame = b64(one_face_frame())
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        for i in range(1, 41):
            ws.send_json({"event": "process_frame", "data": {"frame": frame, "timestamp": i}})
        results = []
        while not results or results[-1]["timestamp"] != 40:  # the newest frame is never dropped
            message = ws.receive_json()
            assert message["event"] == "detection_result", message
            results.append(message["data"])
        dropped = results[-1]["frames_dropped"]
        assert len(results) < 40 and dropped > 0 and len(results) + dropped == 40
        assert [r["timestamp"] for r in results] == sorted(r["timestamp"] for r in results)
        assert all(len(r["faces"]) == 1 for r in results)
        assert_usable(ws)
    stats = client.get("/api/stats").json()
    assert stats["total_frames_processed"] == len(results) and stats["total_frames_dropped"] == dropped
    assert stats["total_frames_received"] == 40 and stats["active_connections"] == 0
    assert stats["average_processing_time"] > 0 and stats["p95_processing_time"] >= stats["average_processing_time"] / 2
    assert stats["uptime"] > 0


def test_the_connection_over_the_limit_is_closed_with_a_reason(client_factory: Factory) -> None:
    client = client_factory(max_concurrent_connections=2)
    first, second = connect(client), connect(client)
    try:
        with client.websocket_connect("/ws") as third:
            refused = third.receive_json()
            assert refused["event"] == "error" and refused["data"]["code"] == "connection_limit"
            assert refused["data"]["details"] == {"max_concurrent_connections": 2}
            with pytest.raises(WebSocketDisconnect) as closed:
                third.receive_json()
            assert closed.value.code == 1013 and "MAX_CONCURRENT_CONNECTIONS" in closed.value.reason
        # Those already connected are served, and told that the service is full.
        first.send_json(frame_event(Photos.yaoming))
        (alert,) = first.receive_json()["data"]["alerts"]
        assert alert["type"] == "connection_limit" and alert["level"] == "critical"
    finally:
        second.__exit__(None, None, None)
    fourth = connect(client)  # room again
    fourth.__exit__(None, None, None)
    first.__exit__(None, None, None)
    stats = client.get("/api/stats").json()
    assert stats["rejected_connections"] == 1 and stats["total_connections"] == 3


def test_crowd_alerts_have_a_cool_down_per_connection(client_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.api.ws as ws_module
    from app.realtime import AlertThrottle

    now = [0.0]  # the throttles' clock: the test moves it, so no step depends on how fast the machine is
    monkeypatch.setattr(ws_module, "AlertThrottle", lambda cooldown: AlertThrottle(cooldown, clock=lambda: now[0]))
    client = client_factory(alert_cooldown=1.0)

    def alerts(ws: WebSocketTestSession, threshold: int) -> list[dict[str, Any]]:
        ws.send_json(frame_event(Photos.t1, crowd_threshold=threshold, heads=[]))
        result: list[dict[str, Any]] = ws.receive_json()["data"]["alerts"]
        return result

    with client.websocket_connect("/ws") as ws, client.websocket_connect("/ws") as other:
        ws.receive_json()
        other.receive_json()
        (alert,) = alerts(ws, 3)  # 6 faces, threshold 3: warning
        assert alert["type"] == "crowd_warning" and alert["level"] == "warning"
        assert alert["details"] == {"face_count": 6, "crowd_threshold": 3} and "6 faces" in alert["message"]
        now[0] = 0.5
        assert alerts(ws, 3) == []  # the same scene again, within the cool-down: held back
        assert [a["level"] for a in alerts(ws, 2)] == ["critical"]  # risen past twice the threshold: told at once
        now[0] = 1.4  # 0.9 s after the critical one
        assert alerts(ws, 2) == [] and alerts(ws, 3) == []
        assert [a["type"] for a in alerts(other, 3)] == ["crowd_warning"]  # the cool-down is per connection
        assert alerts(ws, 10) == []  # under the threshold: nothing
        now[0] = 1.55  # 1.05 s after the critical one
        assert [a["level"] for a in alerts(ws, 3)] == ["warning"]  # the cool-down has passed
    assert client.get("/api/stats").json()["total_alerts"] == 4


def test_a_busy_engine_answers_busy_with_retry_after_not_a_queue(client: TestClient) -> None:
    services = client.app.state.services
    services.batcher.seconds_per_image = 10.0  # as measured on a slow engine: one frame ahead is too long a wait
    frame = b64(Photos.yaoming)
    with client.websocket_connect("/ws") as first, client.websocket_connect("/ws") as second:
        first.receive_json()
        second.receive_json()
        with gate_held(services.engine.gate):
            first.send_json({"event": "process_frame", "data": {"frame": frame}})
            deadline = time.monotonic() + 5
            while services.batcher.estimated_wait() == 0:  # the first frame is in line for the engine
                assert time.monotonic() < deadline
                time.sleep(0.01)
            second.send_json({"event": "process_frame", "data": {"frame": frame}})
            busy = second.receive_json()
            assert busy["event"] == "error" and busy["data"]["code"] == "busy", busy
            assert busy["data"]["details"]["retry_after"] >= 1 and "GPU_ACQUIRE_TIMEOUT" in busy["data"]["message"]
            assert_usable(second)
        assert len(first.receive_json()["data"]["faces"]) == 1  # served once the engine is free
    stats = client.get("/api/stats").json()
    assert stats["total_frames_failed"] == 1 and stats["total_frames_processed"] == 1


def test_frames_are_decoded_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    service = client.app.state.service
    threads: list[str] = []
    original = service.decode
    monkeypatch.setattr(
        service, "decode", lambda data, **kw: threads.append(threading.current_thread().name) or original(data, **kw)
    )
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json({"command": "predict", "image": b64(Photos.yaoming)})
        assert ws.receive_json()["status"] == "success"
    loop_thread = client.portal.call(lambda: threading.current_thread().name)  # type: ignore[union-attr]
    assert threads and loop_thread not in threads


def test_a_client_leaving_mid_frame_frees_its_place(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    services = client.app.state.services
    engine = services.engine
    calls: list[int] = []
    original = engine.analyze_holding_gate
    monkeypatch.setattr(
        engine, "analyze_holding_gate", lambda images, **kw: calls.append(len(images)) or original(images, **kw)
    )
    with gate_held(engine.gate):
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            ws.send_json(frame_event(Photos.yaoming))
            deadline = time.monotonic() + 30  # a bound for a loaded machine, not a timing claim
            while services.batcher.estimated_wait() == 0:  # the frame waits for the engine
                assert time.monotonic() < deadline
                time.sleep(0.01)
        deadline = time.monotonic() + 30  # a bound for a loaded machine, not a timing claim
        while client.get("/api/stats").json()["active_connections"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    # The engine is free again: the closed socket's frame is given up, not run.
    deadline = time.monotonic() + 30  # a bound for a loaded machine, not a timing claim
    while services.batcher.estimated_wait() > 0:
        assert time.monotonic() < deadline, "the frame of a closed socket still holds its place"
        time.sleep(0.02)
    assert calls == [] and services.batcher.dropped == 1
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        assert_usable(ws)


def test_sockets_check_keys_as_http_does(client_factory: Callable[..., TestClient], tmp_path: Any) -> None:
    from app.access.keys import KEYS_FILE, KeyStore

    store = KeyStore(tmp_path / KEYS_FILE)
    _, reader = store.create("kiosk", ["search"])
    _, writer = store.create("ingester", ["write"])
    store.close()
    client = client_factory(auth_reads="key")
    with client.websocket_connect(f"/ws?key={reader}") as ws:  # the key as a query parameter
        assert ws.receive_json()["event"] == "connected"
        assert_usable(ws)
    with client.websocket_connect("/ws") as ws:  # reads need a key: the first message brings it
        ws.send_json({"command": "auth", "key": reader})
        assert ws.receive_json() == {"type": "auth", "status": "success", "key": "kiosk"}
        assert ws.receive_json()["event"] == "connected"
        assert_usable(ws)
    for first in ({"command": "health"}, {"command": "auth", "key": "oc_wrong"}, {"command": "auth", "key": writer}):
        with client.websocket_connect("/ws") as ws:  # no key, a wrong one, one without the search scope
            ws.send_json(first)
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    ws.receive_json()
            assert closed.value.code == 1008, first
    with client.websocket_connect("/ws?key=oc_wrong") as ws:
        with pytest.raises(WebSocketDisconnect):
            while True:
                ws.receive_json()


def test_socket_series_are_in_metrics(client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["event"] == "connected"
        ws.send_json(frame_event(Photos.yaoming))
        assert receive(ws, skip=("alert",))["event"] == "detection_result"
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert families["oceano_ws_connections_open"].samples[0].value == 1
    processed = families["oceano_ws_frames_processed"].samples[0]
    assert processed.name == "oceano_ws_frames_processed_total" and processed.value == 1
