"""Production shape for real: `python -m app` (uvicorn, one worker) behind nginx with deploy/nginx.conf, over TLS
with a self-signed certificate made here by the openssl command.

Skips when nginx or openssl is not installed (Debian: apt-get install nginx openssl; .ci/run installs nginx when
it can).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support import REPO, Photos, b64, free_port, large_face_jpeg

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
OPENSSL = shutil.which("openssl")
# Past nginx's oceano_search zone (10 per second, bursts of 20): sent at once, most are answered 429.
BURST = 80


def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 90, *, verify: Any = True) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {seconds}s")


@dataclass(frozen=True)
class Service:
    address: str  # host:port, plain HTTP: nginx's upstream
    state: Path  # its STATE_DIR: `python -m app.keys` run with it changes the running service's keys
    log: Path

    def keys(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "STATE_DIR": str(self.state)}
        done = subprocess.run(
            [sys.executable, "-m", "app.keys", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    state = tmp_path_factory.mktemp("state")
    port = free_port()
    env = {
        **os.environ,
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(state / "qdrant"),
        "THUMBS_DIR": str(state / "thumbs"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
    }
    log = state / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=REPO,
            env={**env, "LOG_LEVEL": "info"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/health", proc)
            yield Service(f"127.0.0.1:{port}", state, log)
        finally:
            proc.terminate()  # SIGTERM: uvicorn drains, the lifespan flushes and closes the store
            proc.wait(30)
    text = log.read_text()
    assert "MODEL PACK IN USE: bundled" in text
    assert "store flushed and closed" in text, text[-2000:]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid one day, and its key (no passphrase), by openssl."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(
        [
            OPENSSL or "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=oceano-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@dataclass(frozen=True)
class Nginx:
    url: str  # https://127.0.0.1:PORT (the config's 443)
    http_url: str  # http://127.0.0.1:PORT (the config's 80)
    tls: ssl.SSLContext  # trusts the test's self-signed certificate (and nothing else): verification stays on
    root: Path  # its prefix: error.log and access.log are here

    def error_log(self) -> str:
        return (self.root / "error.log").read_text()

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.tls, **{"timeout": 60, **options})

    @property
    def ws_url(self) -> str:
        return self.url.replace("https://", "wss://") + "/ws"


def site_for_test(site: str, *, upstream: str, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with the upstream, the ports and the certificate paths of this test; each must be found
    exactly once, so a change to the file that the test would silently not follow fails here."""
    for old, new in (
        ("server oceano-api:9100;", f"server {upstream};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("/etc/nginx/certs/fullchain.pem;", f"{cert};"),
        ("/etc/nginx/certs/privkey.pem;", f"{key};"),
    ):
        assert site.count(old) == 1, f"deploy/nginx.conf: expected {old!r} once"
        site = site.replace(old, new)
    return site


@pytest.fixture(scope="module")
def nginx(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (apt-get install openssl)")
    root = tmp_path_factory.mktemp("nginx")
    cert, key = self_signed_certificate(root)
    http_port, https_port = free_port(), free_port()
    site = site_for_test(
        (REPO / "deploy" / "nginx.conf").read_text(),
        upstream=service.address,
        http_port=http_port,
        https_port=https_port,
        cert=cert,
        key=key,
    )
    (root / "site.conf").write_text(site)
    # As root, nginx's workers would run as nobody, who cannot enter pytest's private tmp folders to write the
    # temp files of bodies over client_body_buffer_size: keep them as the user running the tests.
    user = "user root;" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(f"""
{user}
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;  # info: the connections nginx closes on a timeout are named too
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
    tls = ssl.create_default_context(cafile=str(cert))
    proc = subprocess.Popen([NGINX, "-c", str(root / "nginx.conf"), "-p", str(root)])
    try:
        wait_ready(f"https://127.0.0.1:{https_port}/health", proc, 20, verify=tls)
        yield Nginx(f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", tls, root)
    finally:
        proc.terminate()
        proc.wait(10)


def enforced(nginx: Nginx, *, key_required: bool) -> None:
    """Wait (bounded) until the running service has picked up a key change made by the CLI: a key-less write-scope
    read (GET /api/jobs, harmless) through nginx is 401 while a key exists, 200 while none does."""
    want = 401 if key_required else 200
    deadline = time.monotonic() + 15
    with nginx.client() as http:
        while (status := http.get("/api/jobs").status_code) != want:
            assert time.monotonic() < deadline, f"GET /api/jobs still {status}, not {want}, after 15 s"
            time.sleep(0.2)


@dataclass(frozen=True)
class Key:
    name: str
    key: str


@pytest.fixture
def write_key(service: Service, nginx: Nginx) -> Iterator[Key]:
    """A `write` key made by `python -m app.keys` in the service's STATE_DIR, in force; revoked afterwards (and
    the service back in protected mode) so that the key-less tests keep their meaning whatever the order."""
    name = f"nginx-{uuid.uuid4().hex[:8]}"
    key = service.keys("create", "--name", name, "--scope", "write").stdout.strip().splitlines()[-1]
    assert key.startswith("oc_")
    try:
        enforced(nginx, key_required=True)
        yield Key(name, key)
    finally:
        service.keys("revoke", name)
        enforced(nginx, key_required=False)


SEARCH_LINE = re.compile(
    r"app\.api\.context[^:\n]*: POST (?:/api/search|/api/search/batch|/search|/api/analyze) (\d{3}) "
)


def service_answers(service: Service) -> Counter[int]:
    """The service's answers to the search routes so far, by status, from its access log (app.api.context)."""
    return Counter(int(status) for status in SEARCH_LINE.findall(service.log.read_text()))


def test_search_through_nginx(nginx: Nginx) -> None:
    with nginx.client() as http:
        r = http.post("/api/faces", files={"file": ("players.jpg", Photos.players.read_bytes())})
        assert r.status_code == 201, r.text
        r = http.post(
            "/search", files={"file": ("yao.jpg", Photos.yaoming.read_bytes())}, headers={"Accept": "application/json"}
        )
        assert r.status_code == 200
        top = r.json()["faces"][0]["matches"][0]
        assert top["file"] == "players.jpg" and top["score"] > 0.45
        thumb = http.get(top["thumb_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        # Erased faces must not outlive their erasure in caches: nginx adds no expiry to the service's answer.
        assert thumb.headers["cache-control"] == "private, no-cache" and "expires" not in thumb.headers
        page = http.get("/")
        assert page.status_code == 200 and "<form" in page.text


def test_tls_versions_and_hsts(nginx: Nginx) -> None:
    """TLS 1.2 and 1.3 are both served, the certificate verifies against the test's own (no verify=False), and
    every HTTPS answer, the service's and nginx's own, carries HSTS."""
    port = int(nginx.url.rsplit(":", 1)[1])
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cafile=nginx.root / "fullchain.pem")
        context.minimum_version = context.maximum_version = version
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == version.name.replace("_", ".")  # TLSv1_2 -> "TLSv1.2"
    # A client that does not trust the certificate is refused by the client itself: it is not a public one.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{nginx.url}/health", timeout=10)
    with nginx.client() as http:
        for r in (
            http.get("/health"),
            http.get("/no-such-page"),
            http.get("/"),
            http.post("/api/search", files={"file": ("x.jpg", b"not an image")}),
        ):
            assert r.headers["strict-transport-security"] == "max-age=63072000", (r.url, r.headers)


def test_plain_http_serves_health_redirects_pages_and_refuses_the_api(nginx: Nginx) -> None:
    """Port 80: /health for probes; a key-less GET is sent to HTTPS; a request with a key, a body or an upgrade is
    refused with 403 (never redirected: it has crossed the network in clear already)."""
    with httpx.Client(base_url=nginx.http_url, timeout=30) as http:
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["status"]
        page = http.get("/live?x=1")
        assert page.status_code == 301 and page.headers["location"] == "https://127.0.0.1/live?x=1"
        for r in (
            http.post("/api/search", files={"file": ("yao.jpg", Photos.yaoming.read_bytes())}),
            http.delete("/api/faces/00000000-0000-0000-0000-000000000000"),
            http.get("/api/heads", headers={"X-API-Key": "oc_" + "a" * 43}),
            http.get("/status", headers={"Authorization": "Bearer oc_" + "a" * 43}),
        ):
            assert r.status_code == 403, (r.request.method, r.url, r.status_code)
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"] == "https_required" and "HTTPS" in r.json()["detail"]
            assert "x-request-id" not in r.headers  # nginx's own answer: the service never saw it
    with pytest.raises(InvalidStatus) as refused:
        connect(nginx.http_url.replace("http://", "ws://") + "/ws", open_timeout=30)
    assert refused.value.response.status_code == 403


def test_nginx_refuses_oversized_upload_itself(nginx: Nginx) -> None:
    """Over client_max_body_size nginx answers 413 with its own HTML page: the body never reaches the service
    (whose own 413 is JSON naming MAX_UPLOAD_MB)."""
    big = os.urandom(22 * 2**20)
    with nginx.client() as http:
        r = http.post("/api/search", files={"file": ("big.jpg", big)})
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("text/html") and r.headers["server"].startswith("nginx")
    assert "<center>nginx" in r.text and "413 Request Entity Too Large" in r.text
    assert "MAX_UPLOAD_MB" not in r.text and "application/json" not in r.headers["content-type"]
    assert "client intended to send too large body" in nginx.error_log()


def test_a_large_valid_photo_goes_through_nginx(nginx: Nginx) -> None:
    """A 12 MP, ~10 MB JPEG (under MAX_UPLOAD_MB and the megapixel cap) is passed on by nginx and searched."""
    photo = large_face_jpeg()
    assert 9 * 2**20 < len(photo) < 20 * 2**20
    with nginx.client(timeout=120) as http:
        r = http.post("/api/search", files={"file": ("big-face.jpg", photo)})
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["model"] == "bundled" and len(body["faces"]) == 1
    x1, y1, x2, y2 = body["faces"][0]["bbox"]
    assert x2 - x1 > 1000 and y2 - y1 > 1000  # the face spans the photo's height: found at full scale
    assert body["faces"][0]["det_score"] > 0.5


def test_service_refuses_oversized_upload_itself(service: Service) -> None:
    big = b"\xff\xd8\xff" + os.urandom(21 * 2**20)
    r = httpx.post(f"http://{service.address}/api/search", files={"file": ("big.jpg", big)}, timeout=60)
    assert r.status_code == 413 and "MAX_UPLOAD_MB" in r.json()["detail"]
    assert httpx.get(f"http://{service.address}/health").status_code == 200


def test_nginx_reports_the_client_and_the_request_id(nginx: Nginx) -> None:
    with nginx.client() as http:
        assert http.get("/health", headers={"X-Request-ID": "via-nginx-1"}).headers["X-Request-ID"] == "via-nginx-1"
        made = http.get("/health").headers["X-Request-ID"]  # nginx's own $request_id
        assert len(made) == 32 and int(made, 16) >= 0
        # nginx replaces what the client claims with the address it saw (this machine: protected mode lets it
        # write); appended to, the claim would have been believed.
        r = http.post(
            "/api/faces", files={"file": ("t1.jpg", Photos.t1.read_bytes())}, headers={"X-Forwarded-For": "203.0.113.9"}
        )
        assert r.status_code == 201, r.text


def test_websocket_round_trip_through_nginx(nginx: Nginx) -> None:
    """/ws through the proxy, over TLS (wss): the upgrade is passed on, frames go both ways, the socket survives an
    error. The asyncio client, not websockets' threaded one: that one reads the socket on a thread of its own from
    before it sends the upgrade, and one TLS session read and written by two threads at once is unsafe (OpenSSL
    forbids it; Python's ssl module does not serialise the two): about one connection in a hundred lost its
    upgrade request under TLS 1.3, and nginx closed it at client_header_timeout ("client timed out while waiting
    for request"), an EOF for the client after 10 s."""

    async def round_trip() -> None:
        async with asyncio.timeout(120):
            async with ws_connect(nginx.ws_url, ssl=nginx.tls, open_timeout=30, max_size=2**22) as ws:
                assert json.loads(await ws.recv())["event"] == "connected"
                await ws.send(json.dumps({"command": "predict", "image": b64(Photos.yaoming)}))
                answer = json.loads(await ws.recv())
                assert answer["type"] == "prediction" and answer["status"] == "success" and answer["faces"] == 1
                await ws.send("{not json")
                assert json.loads(await ws.recv())["data"]["code"] == "bad_json"
                await ws.send(json.dumps({"event": "process_frame", "data": {"frame": b64(Photos.t1), "timestamp": 7}}))
                result = json.loads(await ws.recv())
                assert result["event"] == "detection_result" and result["data"]["timestamp"] == 7
                assert result["data"]["crowd_analysis"]["face_count"] == 6

    asyncio.run(round_trip())


def test_keyed_write_and_401_through_nginx(service: Service, nginx: Nginx, write_key: Key) -> None:
    """Keys pass through nginx in both spellings. nginx connects to the service from loopback and names the client
    by its address (127.0.0.1 here), so while no key exists protected mode lets this test write without one (the
    tests above do); once a key exists, a write needs a key from every client, loopback included: 401."""
    photo = Photos.tom_hanks.read_bytes()
    with nginx.client() as http:
        r = http.post("/api/faces", files={"file": ("tom.png", photo)}, headers={"X-API-Key": write_key.key})
        assert r.status_code == 201, r.text
        assert r.json()["faces"]
        r = http.post(
            "/api/faces", files={"file": ("tom.png", photo)}, headers={"Authorization": f"Bearer {write_key.key}"}
        )
        assert r.status_code == 201, r.text
        for headers in ({}, {"X-API-Key": "oc_" + "x" * 43}, {"Authorization": "Bearer oc_" + "x" * 43}):
            r = http.post("/api/faces", files={"file": ("tom.png", photo)}, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["error"] == "unauthorized" and "X-API-Key" in r.json()["detail"]
            assert r.headers["www-authenticate"] == 'Bearer realm="oceano"'
            assert "x-request-id" in r.headers  # the service's answer, passed on
        # Reads stay open (AUTH_READS=open): a search needs no key.
        r = http.post("/api/search", files={"file": ("yao.jpg", Photos.yaoming.read_bytes())})
        assert r.status_code == 200, r.text
    # The service saw the key (its access log names it, never the key itself) and the client nginx saw.
    log = service.log.read_text()
    assert "POST /api/faces 201" in log and f"key={write_key.name} client=127.0.0.1" in log
    assert write_key.key not in log


def test_search_routes_rate_limited_by_nginx(service: Service, nginx: Nginx) -> None:
    """A burst past nginx's oceano_search zone (10/s, bursts of 20, per client address) over the four search
    routes: nginx answers the excess itself (429, JSON in the service's error shape, Retry-After, no request id:
    the service never saw them), the routes share one budget, other routes are not limited, and it recovers."""
    routes = ["/api/search", "/api/search/batch", "/search", "/api/analyze"]
    junk = {"file": ("junk.jpg", b"not an image at all")}  # the service refuses it at once (no inference)

    before = service_answers(service)
    with nginx.client(limits=httpx.Limits(max_connections=BURST)) as http:

        def post(i: int) -> httpx.Response:
            return http.post(routes[i % len(routes)], files=junk, headers={"Accept": "application/json"})

        started = time.monotonic()
        answers: list[httpx.Response] = []
        with ThreadPoolExecutor(16) as pool:
            # A machine so slow that one burst stays under 10/s sends another (at most five): every route must
            # meet the limit whatever the speed; the bound below holds over however long it took.
            for _ in range(5):
                answers += pool.map(post, range(len(answers), len(answers) + BURST))
                if {str(r.url.path) for r in answers if r.status_code == 429} == set(routes):
                    break
        elapsed = time.monotonic() - started
        unlimited = http.get("/api/heads")

    limited = [r for r in answers if r.status_code == 429]
    passed = [r for r in answers if r.status_code != 429]
    assert limited, f"no 429 in {len(answers)} requests over {elapsed:.2f} s"
    # At most the burst, the first request, and 10 per second of the burst's duration got through (plus slack).
    assert len(passed) <= 21 + 10 * elapsed + 2, (len(passed), elapsed)
    assert {r.status_code for r in passed} <= {400, 415, 422}, Counter(r.status_code for r in passed)
    assert all("x-request-id" in r.headers for r in passed)
    assert {str(r.url.path) for r in limited} == set(routes)  # one zone for the four routes
    for r in limited:
        assert r.headers["retry-after"] == "1" and r.headers["server"].startswith("nginx")
        assert r.headers["content-type"] == "application/json"
        assert r.headers["strict-transport-security"] == "max-age=63072000"
        assert "x-request-id" not in r.headers
        body = r.json()
        assert body["error"] == "rate_limited" and "(nginx)" in body["detail"] and "127.0.0.1" in body["detail"]
    assert "limiting requests" in nginx.error_log() and 'zone "oceano_search"' in nginx.error_log()
    assert unlimited.status_code == 200
    # The refused requests never reached the service: its access log has the passed ones only (it writes each
    # line as the answer goes: wait for them, bounded), and no 429 of its own.
    deadline = time.monotonic() + 10
    while (seen := service_answers(service) - before) != Counter(r.status_code for r in passed):
        assert time.monotonic() < deadline, (seen, Counter(r.status_code for r in passed))
        time.sleep(0.2)
    # A second later the budget is back (and left drained for whatever runs next).
    deadline = time.monotonic() + 10
    with nginx.client() as http:
        while (status := http.post("/api/search", files=junk).status_code) == 429:
            assert time.monotonic() < deadline, "still 429 after 10 s"
            time.sleep(0.2)
        assert status == 415
    time.sleep(2.5)


# ------------------------------------------------------------------------------------------------ slow clients
# deploy/nginx.conf: client_header_timeout 10s, client_body_timeout 20s, limit_conn 32 per address. Each wait below
# is bounded well under nginx's defaults (60 s for both timeouts), so a config without them fails here.
HEADER_DEADLINE = 40.0
BODY_DEADLINE = 45.0
CONN_LIMIT = 32


def tls_from(nginx: Nginx, source: str = "127.0.0.1") -> ssl.SSLSocket:
    """A TLS connection to nginx's HTTPS port from `source` (any 127.0.0.0/8 address: its own client to nginx)."""
    port = int(nginx.url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return nginx.tls.wrap_socket(raw, server_hostname="127.0.0.1")


def closed_within(sock: ssl.SSLSocket, seconds: float, drip: bytes = b"") -> tuple[bytes, bool]:
    """Reads until the peer closes (or resets) the connection or `seconds` pass, sending one byte of `drip` every
    quarter second meanwhile. Returns (bytes read, closed)."""
    received = b""
    end = time.monotonic() + seconds
    sent = 0
    sock.settimeout(0.25)
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            if sent < len(drip):
                try:
                    sock.sendall(drip[sent : sent + 1])
                except OSError:
                    return received, True
                sent += 1
            continue
        except OSError:  # reset (reset_timedout_connection) or a TLS error on a dead connection
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def test_nginx_cuts_off_a_slow_request_head(service: Service, nginx: Nginx) -> None:
    """A request head sent a byte at a time (never finished) and a connection that sends nothing: nginx closes
    both at client_header_timeout; the service never hears of them; /health through nginx is 200 meanwhile."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: slow-head-1\r\nX-Pad: " + b"a" * 10_000
    with tls_from(nginx, "127.0.0.6") as dripping, tls_from(nginx, "127.0.0.6") as silent:
        with nginx.client() as http:
            assert http.get("/health").status_code == 200
        _, closed = closed_within(dripping, HEADER_DEADLINE, drip=head)
        assert closed, "nginx kept a connection whose request head never ended"
        _, closed = closed_within(silent, HEADER_DEADLINE)
        assert closed
    assert "slow-head-1" not in service.log.read_text()


def test_nginx_cuts_off_a_stalled_body_before_the_service_sees_it(service: Service, nginx: Nginx) -> None:
    """An upload that sends its head and the first bytes of its body, then nothing: nginx ends it at
    client_body_timeout. The body is buffered by nginx, so the service never saw the request at all."""
    head = (
        b"POST /api/faces HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: stalled-body-1\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n"
    )
    with tls_from(nginx, "127.0.0.7") as sock:
        sock.sendall(head)
        received, closed = closed_within(sock, BODY_DEADLINE)
    assert closed, "nginx kept a connection whose body stalled"
    assert not received.startswith(b"HTTP/1.1 2")
    assert "stalled-body-1" not in service.log.read_text()
    with nginx.client() as http:
        assert http.get("/health").status_code == 200


def test_nginx_limits_connections_per_client_address(service: Service, nginx: Nginx) -> None:
    """CONN_LIMIT uploads in progress (head sent, body pending) from one address: the next request from it is
    answered 429 by nginx itself (JSON naming the limit, Retry-After); another address is served; once they end,
    the address is served again."""
    source = "127.0.0.8"
    head = (
        b"POST /api/faces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000000\r\n\r\n--b\r\n"
    )
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(CONN_LIMIT):
            sock = tls_from(nginx, source)
            sock.sendall(head)
            held.append(sock)
        # nginx counts each held upload once it has read its head, as it comes: until the last are counted the
        # next request may still be served, so ask again (bounded) until it is refused; without the limit it never is.
        deadline = time.monotonic() + 30
        while True:
            with tls_from(nginx, source) as extra:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                received, _ = closed_within(extra, 30)
            if not received.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        status, _, rest = received.partition(b"\r\n")
        assert status == b"HTTP/1.1 429 Too Many Requests", received[:400]
        body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "rate_limited" and "too many connections" in body["detail"] and source in body["detail"]
        assert b"\r\nRetry-After: 1\r\n" in rest
        with nginx.client() as http:  # 127.0.0.1: its own count
            assert http.get("/health").status_code == 200
    finally:
        for sock in held:
            sock.close()
    assert 'limiting connections by zone "oceano_conn"' in nginx.error_log()
    deadline = time.monotonic() + 15
    while True:
        with tls_from(nginx, source) as again:
            again.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            received, _ = closed_within(again, 30)
        if received.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
