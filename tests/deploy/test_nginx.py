"""Production shape for real: `python -m app` (uvicorn, one worker) behind nginx with deploy/nginx.conf.

Skips when nginx is not installed (Debian: apt-get install nginx; .ci/run installs it when it can).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import REPO, Photos, b64

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {seconds}s")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("state")
    port = free_port()
    env = {**os.environ, "STATE_DIR": str(state), "QDRANT_PATH": str(state / "qdrant"),
           "THUMBS_DIR": str(state / "thumbs"), "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warning"}
    log = state / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env={**env, "LOG_LEVEL": "info"},
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(f"http://127.0.0.1:{port}/health", proc)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()  # SIGTERM: uvicorn drains, the lifespan flushes and closes the store
            proc.wait(30)
    text = log.read_text()
    assert "MODEL PACK IN USE: bundled" in text
    assert "store flushed and closed" in text, text[-2000:]


@pytest.fixture(scope="module")
def nginx(service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    root = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = (REPO / "deploy" / "nginx.conf").read_text()
    site = site.replace("server oceano-api:9100;", f"server {service};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    (root / "site.conf").write_text(site)
    (root / "nginx.conf").write_text(f"""
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/site.conf;
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(root / "nginx.conf"), "-p", str(root)])
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, 20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_search_through_nginx(nginx: str) -> None:
    with httpx.Client(base_url=nginx, timeout=60) as http:
        r = http.post("/api/faces", files={"file": ("players.jpg", Photos.players.read_bytes())})
        assert r.status_code == 201, r.text
        r = http.post("/search", files={"file": ("yao.jpg", Photos.yaoming.read_bytes())},
                      headers={"Accept": "application/json"})
        assert r.status_code == 200
        top = r.json()["faces"][0]["matches"][0]
        assert top["file"] == "players.jpg" and top["score"] > 0.45
        thumb = http.get(top["thumb_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        # Erased faces must not outlive their erasure in caches: nginx adds no expiry to the service's answer.
        assert thumb.headers["cache-control"] == "private, no-cache" and "expires" not in thumb.headers
        page = http.get("/")
        assert page.status_code == 200 and "<form" in page.text


def test_nginx_refuses_oversized_upload(nginx: str) -> None:
    big = os.urandom(22 * 2**20)
    r = httpx.post(f"{nginx}/api/search", files={"file": ("big.jpg", big)}, timeout=60)
    assert r.status_code == 413


def test_service_refuses_oversized_upload_itself(service: str) -> None:
    big = b"\xff\xd8\xff" + os.urandom(21 * 2**20)
    r = httpx.post(f"http://{service}/api/search", files={"file": ("big.jpg", big)}, timeout=60)
    assert r.status_code == 413 and "MAX_UPLOAD_MB" in r.json()["detail"]
    assert httpx.get(f"http://{service}/health").status_code == 200


def test_websocket_round_trip_through_nginx(nginx: str) -> None:
    """/ws through the proxy: the upgrade is passed on, frames go both ways, the socket survives an error."""
    with connect(nginx.replace("http://", "ws://") + "/ws", open_timeout=30, max_size=2**22) as ws:
        assert json.loads(ws.recv(timeout=30))["event"] == "connected"
        ws.send(json.dumps({"command": "predict", "image": b64(Photos.yaoming)}))
        answer = json.loads(ws.recv(timeout=60))
        assert answer["type"] == "prediction" and answer["status"] == "success" and answer["faces"] == 1
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=30))["data"]["code"] == "bad_json"
        ws.send(json.dumps({"event": "process_frame", "data": {"frame": b64(Photos.t1), "timestamp": 7}}))
        result = json.loads(ws.recv(timeout=60))
        assert result["event"] == "detection_result" and result["data"]["timestamp"] == 7
        assert result["data"]["crowd_analysis"]["face_count"] == 6
