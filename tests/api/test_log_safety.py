"""What the real `python -m app` writes to its log (text and LOG_FORMAT=json) when clients send keys by every road
(query string, headers, WebSocket URL) and paths meant to forge lines: no key, valid or not, ever appears, and
every line of the text log is one record. Also NUL characters in paths, which are refused with 400 wherever they
are sent. uvicorn's own lines (its WebSocket access line logs the path with its query string) are checked too."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect

from app.access.keys import KEYS_FILE, KeyStore
from tests.support import ServiceProcess, service_process

FORGED = "FORGED-LINE 127.0.0.1 GET /admin 200"


@dataclass(frozen=True)
class Scanned:
    log: str
    json_lines: bool
    valid: str  # a key the service knows (search scope)
    invalid: str  # one shaped like a key that it does not


def hostile_traffic(service: ServiceProcess, valid: str, invalid: str) -> None:
    """Keys by every road a client may send them, and a path holding encoded line breaks."""
    ws_url = service.url.replace("http://", "ws://") + "/ws"
    for key in (valid, invalid):
        try:
            with connect(f"{ws_url}?key={key}", open_timeout=30, close_timeout=5) as ws:
                ws.recv(timeout=30)
        except (InvalidStatus, WebSocketException, TimeoutError):
            pass  # refused or closed: only what the log says about it matters here
    with httpx.Client(base_url=service.url, timeout=30) as http:
        for key in (valid, invalid):
            http.get(f"/status?key={key}")
            http.get(f"/api/heads?api_key={key}&x=1")
            http.get("/status", headers={"X-API-Key": key})
            http.get("/status", headers={"Authorization": f"Bearer {key}"})
            http.get(f"/no/such/{key}")
        http.get("/health%0a" + FORGED.replace(" ", "%20") + "%0d%0a" + FORGED.replace(" ", "%20"))


@pytest.fixture(scope="module", params=["text", "json"])
def scanned(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scanned]:
    state = tmp_path_factory.mktemp("state")
    store = KeyStore(state / KEYS_FILE)
    _, valid = store.create("planted", ["search"])
    store.close()
    invalid = "oc_" + secrets.token_urlsafe(32)
    env = {"LOG_FORMAT": request.param, "LOG_LEVEL": "debug", "AUTH_READS": "key"}
    with service_process(state, env) as service:
        hostile_traffic(service, valid, invalid)
    yield Scanned(service.log_text(), request.param == "json", valid, invalid)


def test_no_key_in_any_log_line(scanned: Scanned) -> None:
    assert scanned.log.count("\n") > 10  # the service did write its lines (start-up, access, uvicorn's)
    for key in (scanned.valid, scanned.invalid):
        assert key not in scanned.log
        assert key[3:15] not in scanned.log  # not even a piece of it
    # The roads were taken and logged, redacted: uvicorn's WebSocket line, and the access lines.
    assert "WebSocket /ws?key=[redacted]" in scanned.log
    assert "/no/such/oc_[redacted]" in scanned.log


def test_a_path_cannot_forge_a_log_line(scanned: Scanned) -> None:
    lines = scanned.log.splitlines()
    if scanned.json_lines:
        assert all(isinstance(json.loads(line), dict) for line in lines if line.strip())
    else:
        assert not any(line.startswith(FORGED) for line in lines), [ln for ln in lines if FORGED in ln]
        assert any(f"/health\\n{FORGED}\\r\\n{FORGED}" in line for line in lines)


@pytest.fixture(scope="module")
def open_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    state = tmp_path_factory.mktemp("state")
    with service_process(state, {"INGEST_ROOTS": str(state)}) as service:
        yield service


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/thumbs/ab%00cd"),
        ("GET", "/static/live%00.js"),
        ("GET", "/api/heads/emo%00tion"),
        ("DELETE", "/api/faces/00000000-0000-0000-0000-%0000000000"),
        ("DELETE", "/api/faces?subject=a%00b"),
        ("GET", "/api/jobs/%00"),
        ("DELETE", "/api/keys/na%00me"),
        ("GET", "/he%00alth"),
    ],
)
def test_a_nul_in_a_path_is_a_400_naming_it(open_service: ServiceProcess, method: str, path: str) -> None:
    r = httpx.request(method, open_service.url + path, timeout=30)
    assert r.status_code == 400, (path, r.status_code, r.text)
    assert r.json()["error"] == "invalid_request" and "NUL" in r.json()["detail"]


def test_a_nul_in_an_ingest_path_is_refused_naming_it(open_service: ServiceProcess) -> None:
    r = httpx.post(f"{open_service.url}/api/ingest", json={"path": "/tmp/a\x00b"}, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request" and "NUL" in r.json()["detail"]
    assert "Traceback" not in open_service.log_text()
