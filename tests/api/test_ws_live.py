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
    settings = make_settings(tmp_path, max_concurrent_connections=2, max_upload_mb=0.25)
    with live_service(settings) as url:
        endpoint = url.replace("http://", "ws://") + "/ws"
        with connect(endpoint, max_size=2**23) as ws, connect(endpoint) as second:
            assert json.loads(ws.recv(timeout=30))["event"] == "connected"
            assert json.loads(second.recv(timeout=30))["event"] == "connected"
            prediction = ask(ws, {"command": "predict", "image": b64(one_face_frame())})
            assert prediction["status"] == "success" and prediction["faces"] == 1
            result = ask(ws, {"event": "process_frame", "data": {"frame": b64(Photos.t1), "timestamp": 5,
                                                                  "settings": {"crowd_threshold": 5}}})
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
            # A message far past any frame is refused by uvicorn itself (ws_max_size): closed with 1009.
            ws.send("A" * (settings.ws_max_message_bytes + 1))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
