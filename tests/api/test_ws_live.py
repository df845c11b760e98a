"""/ws served by a real uvicorn (as `python -m app` runs it) to a real WebSocket client (the websockets library):
the handshake, both envelopes, the connection limit and the message cap as a client sees them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support import Photos, b64, live_service, make_settings, one_face_frame


def ask(ws: ClientConnection, message: dict[str, Any] | str) -> dict[str, Any]:
    ws.send(message if isinstance(message, str) else json.dumps(message))
    answer: dict[str, Any] = json.loads(ws.recv(timeout=60))
    return answer


def test_live_uvicorn_socket(tmp_path: Path) -> None:
    # A small WS_MAX_MESSAGE_BYTES: the oversized message below is then written whole into the loopback socket's
    # buffers before uvicorn reads its header and closes, so the client reads the close frame (with 4 MiB the
    # connection was sometimes torn down while the client was still writing, and no close code arrived).
    settings = make_settings(
        tmp_path, max_concurrent_connections=2, max_upload_mb=0.25, ws_max_message_bytes=512 * 1024
    )
    with live_service(settings) as url:
        endpoint = url.replace("http://", "ws://") + "/ws"
        with connect(endpoint, max_size=2**23) as ws, connect(endpoint) as second:
            assert json.loads(ws.recv(timeout=30))["event"] == "connected"
            assert json.loads(second.recv(timeout=30))["event"] == "connected"
            prediction = ask(ws, {"command": "predict", "image": b64(one_face_frame())})
            assert prediction["status"] == "success" and prediction["faces"] == 1
            result = ask(
                ws,
                {
                    "event": "process_frame",
                    "data": {"frame": b64(Photos.t1), "timestamp": 5, "settings": {"crowd_threshold": 5}},
                },
            )
            assert result["event"] == "detection_result" and result["data"]["timestamp"] == 5
            assert [a["type"] for a in result["data"]["alerts"]] == ["crowd_warning", "connection_limit"]
            # A third socket is closed with 1013 and the reason, after an error event that says the same.
            with connect(endpoint) as third:
                refused = json.loads(third.recv(timeout=30))
                assert refused["data"]["code"] == "connection_limit"
                with pytest.raises(ConnectionClosed) as closed:
                    third.recv(timeout=30)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
                assert "MAX_CONCURRENT_CONNECTIONS" in closed.value.rcvd.reason
            # A frame over MAX_UPLOAD_MB: an error event, and the socket goes on.
            big = "A" * (settings.max_frame_chars + 4)
            assert ask(ws, {"event": "process_frame", "data": {"frame": big}})["data"]["code"] == "too_large"
            assert ask(ws, {"command": "health"})["clients_connected"] == 2
            # A message over WS_MAX_MESSAGE_BYTES is refused by uvicorn itself (ws_max_size) from its header: closed
            # with 1009, maybe while the client is still sending it.
            with pytest.raises(ConnectionClosed) as closed:
                ws.send("A" * (settings.ws_max_message_bytes + 1))
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_example_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/ws_client.py against a live service: each of its modes prints the service's JSON answers."""
    import importlib.util

    from tests.support import REPO, no_face_jpeg

    spec = importlib.util.spec_from_file_location("ws_client", REPO / "examples" / "ws_client.py")
    assert spec is not None and spec.loader is not None
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(Photos.yaoming.read_bytes())
    (folder / "b.jpg").write_bytes(no_face_jpeg())
    (folder / "notes.txt").write_text("not an image")
    with live_service(make_settings(tmp_path / "state")) as url:
        endpoint = ["--url", url.replace("http://", "ws://") + "/ws", "--compact"]

        def run(*args: str) -> tuple[int, list[dict[str, Any]]]:
            code = client.main([*args, *endpoint])
            return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]

        code, (health,) = run("--health")
        assert code == 0 and health["type"] == "health" and health["status"] == "healthy"
        code, (emotions,) = run("--emotions")
        assert code == 0 and len(emotions["emotions"]) == 7
        code, (info,) = run("--model-info")
        assert code == 0 and info["info"]["num_classes"] == 7
        code, (prediction,) = run(str(Photos.yaoming))
        assert code == 0 and prediction["type"] == "prediction" and prediction["status"] == "success"
        code, answers = run("--folder", str(folder))
        assert code == 1  # b.jpg has no face
        assert [(a["file"], a["status"]) for a in answers] == [("a.jpg", "success"), ("b.jpg", "error")]
        code, (frame,) = run("--frame", "--crowd-threshold", "3", str(Photos.t1))
        assert code == 0 and frame["data"]["crowd_analysis"]["face_count"] == 6
        assert frame["data"]["alerts"][0]["type"] == "crowd_warning"
