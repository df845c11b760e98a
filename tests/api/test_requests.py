"""Around every request: CORS, the request id, structured (JSON) logs of the real `python -m app`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from tests.support import REPO, face_folder, free_port

ORIGIN = "https://app.example.org"


def preflight(client: TestClient, origin: str) -> httpx.Response:
    return client.options(
        "/api/search",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )


def test_cors_allows_configured_origins_only(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(cors_origins=ORIGIN)
    allowed = preflight(client, ORIGIN)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    other = preflight(client, "https://evil.example.com")
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    simple = client.get("/api/heads", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert "retry-after" in exposed and "x-request-id" in exposed
    assert "access-control-allow-origin" not in client.get("/api/heads", headers={"Origin": "https://x.org"}).headers


def test_no_cors_by_default(client: TestClient) -> None:
    r = preflight(client, ORIGIN)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/api/heads", headers={"Origin": ORIGIN}).headers


def test_request_id_kept_when_safe_else_generated(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123.x:y_z"}).headers["X-Request-ID"] == "abc-123.x:y_z"
    made = [client.get("/health").headers["X-Request-ID"] for _ in range(2)]
    assert made[0] != made[1] and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in made)
    for unsafe in ("a" * 129, "bad id", "<script>", "x\tz"):
        got = client.get("/health", headers={"X-Request-ID": unsafe}).headers["X-Request-ID"]
        assert got != unsafe and re.fullmatch(r"[0-9a-f]{32}", got)
    refused = client.post("/api/keys", json={"name": "x", "scopes": ["nope"]}, headers={"X-Request-ID": "r-422"})
    assert refused.status_code == 422 and refused.headers["X-Request-ID"] == "r-422"  # errors carry it too


def test_json_logs_of_the_service_carry_the_request_id(tmp_path: Path) -> None:
    """LOG_FORMAT=json: every line python -m app writes is one JSON object; the access line has the request's
    fields, and a line logged by a worker thread while handling the request carries its id."""
    state, photos = tmp_path / "state", tmp_path / "photos"
    face_folder(photos, 1)
    port = free_port()
    env = {
        **os.environ,
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(state / "qdrant"),
        "THUMBS_DIR": str(state / "thumbs"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_FORMAT": "json",
        "INGEST_ROOTS": str(tmp_path),
    }
    log = tmp_path / "service.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            r = httpx.post(f"{url}/api/ingest", json={"path": str(photos)}, headers={"X-Request-ID": "job-req-1"})
            assert r.status_code == 202 and r.headers["X-Request-ID"] == "job-req-1"
            assert httpx.get(f"{url}/api/heads").status_code == 200
        finally:
            proc.terminate()
            proc.wait(30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line parses
    assert all({"time", "level", "logger", "message", "request_id"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "app.api.context"]
    ingest = next(line for line in access if line["path"] == "/api/ingest")
    assert ingest["request_id"] == "job-req-1" and ingest["method"] == "POST" and ingest["status"] == 202
    assert ingest["duration_ms"] >= 0 and ingest["client"] == "127.0.0.1" and "key" in ingest
    queued = next(line for line in lines if "queued" in line["message"])  # logged in the thread pool
    assert queued["logger"] == "app.ingest.manager" and queued["request_id"] == "job-req-1"
    heads = next(line for line in access if line["path"] == "/api/heads")
    assert re.fullmatch(r"[0-9a-f]{32}", heads["request_id"])
    assert any("MODEL PACK IN USE" in line["message"] for line in lines)  # start-up lines are JSON too
    assert any(line["logger"].startswith("uvicorn") for line in lines)
