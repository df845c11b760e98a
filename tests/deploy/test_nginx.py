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
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import REPO, Photos, b64, large_face_jpeg

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


@dataclass(frozen=True)
class Nginx:
    url: str
    root: Path  # its prefix: error.log and access.log are here

    def error_log(self) -> str:
        return (self.root / "error.log").read_text()


@pytest.fixture(scope="module")
def nginx(service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    root = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = (REPO / "deploy" / "nginx.conf").read_text()
    site = site.replace("server oceano-api:9100;", f"server {service};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    (root / "site.conf").write_text(site)
    # As root, nginx's workers would run as nobody, who cannot enter pytest's private tmp folders to write the
    # temp files of bodies over client_body_buffer_size: keep them as the user running the tests.
    user = "user root;" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(f"""
{user}
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
        yield Nginx(f"http://127.0.0.1:{port}", root)
    finally:
        proc.terminate()
        proc.wait(10)


def test_search_through_nginx(nginx: Nginx) -> None:
    with httpx.Client(base_url=nginx.url, timeout=60) as http:
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


def test_nginx_refuses_oversized_upload_itself(nginx: Nginx) -> None:
    """Over client_max_body_size nginx answers 413 with its own HTML page: the body never reaches the service
    (whose own 413 is JSON naming MAX_UPLOAD_MB)."""
    big = os.urandom(22 * 2**20)
    r = httpx.post(f"{nginx.url}/api/search", files={"file": ("big.jpg", big)}, timeout=60)
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("text/html") and r.headers["server"].startswith("nginx")
    assert "<center>nginx" in r.text and "413 Request Entity Too Large" in r.text
    assert "MAX_UPLOAD_MB" not in r.text and "application/json" not in r.headers["content-type"]
    assert "client intended to send too large body" in nginx.error_log()


def test_a_large_valid_photo_goes_through_nginx(nginx: Nginx) -> None:
    """A 12 MP, ~10 MB JPEG (under MAX_UPLOAD_MB and the megapixel cap) is passed on by nginx and searched."""
    photo = large_face_jpeg()
    assert 9 * 2**20 < len(photo) < 20 * 2**20
    r = httpx.post(f"{nginx.url}/api/search", files={"file": ("big-face.jpg", photo)}, timeout=120)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["model"] == "bundled" and len(body["faces"]) == 1
    x1, y1, x2, y2 = body["faces"][0]["bbox"]
    assert x2 - x1 > 1000 and y2 - y1 > 1000  # the face spans the photo's height: found at full scale
    assert body["faces"][0]["det_score"] > 0.5


def test_service_refuses_oversized_upload_itself(service: str) -> None:
    big = b"\xff\xd8\xff" + os.urandom(21 * 2**20)
    r = httpx.post(f"http://{service}/api/search", files={"file": ("big.jpg", big)}, timeout=60)
    assert r.status_code == 413 and "MAX_UPLOAD_MB" in r.json()["detail"]
    assert httpx.get(f"http://{service}/health").status_code == 200


def test_nginx_reports_the_client_and_the_request_id(nginx: Nginx) -> None:
    with httpx.Client(base_url=nginx.url, timeout=60) as http:
        assert http.get("/health", headers={"X-Request-ID": "via-nginx-1"}).headers["X-Request-ID"] == "via-nginx-1"
        made = http.get("/health").headers["X-Request-ID"]  # nginx's own $request_id
        assert len(made) == 32 and int(made, 16) >= 0
        # nginx replaces what the client claims with the address it saw (this machine: protected mode lets it
        # write); appended to, the claim would have been believed.
        r = http.post("/api/faces", files={"file": ("t1.jpg", Photos.t1.read_bytes())},
                      headers={"X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 201, r.text


def test_websocket_round_trip_through_nginx(nginx: Nginx) -> None:
    """/ws through the proxy: the upgrade is passed on, frames go both ways, the socket survives an error."""
    with connect(nginx.url.replace("http://", "ws://") + "/ws", open_timeout=30, max_size=2**22) as ws:
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
