"""Access over the live app: protected mode, API keys (HTTP and `python -m app.keys` beside the running service),
scopes, AUTH_READS=key, rate limits. Where the client's address matters, real HTTP to a live uvicorn."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.auth import ROUTE_SCOPES, route_scope
from app.api.context import access_log, forwarded_client
from app.cli import ingest
from app.config import Settings
from tests.support import REPO, Photos, face_folder, live_service, make_settings, wait_until

PUBLIC_PEER = {"X-Forwarded-For": "203.0.113.7"}  # a client on the network, as nginx on this machine reports it


def upload(path: Path = Photos.yaoming) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


def keys_command(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "app.keys", *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """A live service trusting forwarded headers from this machine (as behind a local nginx)."""
    settings = make_settings(tmp_path / "state", forwarded_allow_ips="127.0.0.1", ingest_roots=str(tmp_path))
    with live_service(settings) as url:
        yield url, settings


def test_protected_mode_loopback_writes_network_does_not(service: tuple[str, Settings]) -> None:
    url, _ = service
    with httpx.Client(base_url=url, timeout=60) as http:
        mine = http.post("/api/faces", files=upload())
        assert mine.status_code == 201, mine.text
        face = mine.json()["ids"][0]
        r = http.post("/api/faces", files=upload(Photos.t1), headers=PUBLIC_PEER)
        assert r.status_code == 403 and "protected mode" in r.json()["detail"]
        assert "python -m app.keys create" in r.json()["detail"]
        for method, path in (
            ("DELETE", f"/api/faces/{face}"),
            ("GET", "/api/keys"),
            ("GET", "/api/jobs"),
            ("POST", "/api/ingest"),
        ):
            assert http.request(method, path, headers=PUBLIC_PEER).status_code == 403, path
        searched = http.post("/api/search", files=upload(), headers=PUBLIC_PEER)  # reads stay open
        assert searched.status_code == 200 and searched.json()["faces"][0]["matches"][0]["id"] == face
        assert http.get("/api/keys").json() == {"keys": []}  # this machine may manage keys
        assert http.get("/status").json()["vectors"] == 1


def test_forwarded_headers_only_from_configured_proxies(client_factory: Callable[..., TestClient]) -> None:
    # FORWARDED_ALLOW_IPS empty: the peer (loopback here) is the client, whatever X-Forwarded-For says.
    client = client_factory(forwarded_allow_ips="")
    assert client.post("/api/faces", files=upload(), headers=PUBLIC_PEER).status_code == 201
    client = client_factory(collection_name="other")  # default: loopback proxies are believed
    assert client.post("/api/faces", files=upload(), headers=PUBLIC_PEER).status_code == 403
    # A hop made up by the client (left of what the proxy added) is not believed: the nearest untrusted one is.
    r = client.post("/api/faces", files=upload(), headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.7"})
    assert r.status_code == 403
    # FORWARDED_ALLOW_IPS=* (as in docker-compose.yml): a peer on the network cannot pass for this machine by
    # claiming a loopback address.
    remote = TestClient(client.app, client=("172.18.0.5", 40000))
    assert remote.post("/api/faces", files=upload(), headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 403
    client = client_factory(collection_name="third", forwarded_allow_ips="*")
    remote = TestClient(client.app, client=("172.18.0.5", 40000))
    assert remote.post("/api/faces", files=upload(), headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 403
    assert client.post("/api/faces", files=upload()).status_code == 201  # docker exec: loopback, no header
    assert forwarded_client("127.0.0.1, 203.0.113.7", None) == "203.0.113.7"  # "*": the last hop only
    assert (
        forwarded_client("198.51.100.1, 10.0.0.2", Settings(forwarded_allow_ips="10.0.0.0/8").forwarded_networks)
        == "198.51.100.1"
    )


def test_keys_scopes_revocation_and_the_command_beside_the_service(
    service: tuple[str, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, settings = service
    http = httpx.Client(base_url=url, timeout=60)
    made = http.post("/api/keys", json={"name": "ops", "scopes": ["admin"]})  # loopback, no key yet: allowed
    assert made.status_code == 201, made.text
    admin = made.json()["key"]
    assert admin.startswith("oc_") and made.json()["scopes"] == ["admin"]
    # Stored hashed. (Read by another process: a descriptor of the file closed in this one, the service's, would
    # drop SQLite's locks.)
    assert subprocess.run(["grep", "-rqF", admin, str(settings.state_dir)]).returncode == 1

    # Keys exist: writes need one, from this machine too.
    r = http.post("/api/faces", files=upload())
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"] and r.headers["WWW-Authenticate"]
    r = http.post("/api/faces", files=upload(), headers={"X-API-Key": "oc_" + "x" * 43})
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
    assert http.post("/api/search", files=upload()).status_code == 200  # reads stay open (AUTH_READS=open)

    # A key created by the command while the service runs is accepted within seconds, without a restart.
    created = keys_command(settings.state_dir, "create", "--name", "importer", "--scope", "write")
    assert created.returncode == 0, created.stderr
    writer = created.stdout.strip().splitlines()[-1]
    assert writer.startswith("oc_") and created.stdout.strip() == writer and "importer" in created.stderr
    with caplog.at_level(logging.INFO, logger="app.api.context"):
        wait_until(
            lambda: http.post("/api/faces", files=upload(), headers={"X-API-Key": writer}).status_code == 201,
            what="the key created by the command accepted",
        )

        def writes() -> list[logging.LogRecord]:
            return [
                r
                for r in caplog.records
                if r.name == "app.api.context" and getattr(r, "method", "") == "POST" and getattr(r, "status", 0) == 201
            ]

        # The request's log line is written once its answer has gone: it may come a moment after the 201.
        wait_until(lambda: bool(writes()), what="the log line of the accepted write")
    logged = writes()
    assert logged and logged[-1].key == "importer"  # type: ignore[attr-defined]
    assert not any(writer in r.getMessage() or admin in r.getMessage() for r in caplog.records)
    bearer = http.post("/api/faces", files=upload(Photos.t1), headers={"Authorization": f"Bearer {writer}"})
    assert bearer.status_code == 201

    # The bulk-ingest command sends OCEANO_API_KEY.
    face_folder(tmp_path / "photos", 2)
    monkeypatch.setenv("PORT", url.rsplit(":", 1)[1])
    monkeypatch.delenv("OCEANO_API_KEY", raising=False)
    assert ingest.main(["--path", str(tmp_path / "photos")]) == ingest.EXIT_FAILED  # 401
    monkeypatch.setenv("OCEANO_API_KEY", writer)
    assert ingest.main(["--path", str(tmp_path / "photos")]) == ingest.EXIT_OK

    # Scopes: a valid key without the scope is 403, naming the scope.
    reader = http.post("/api/keys", json={"name": "viewer", "scopes": ["search"]}, headers={"X-API-Key": admin}).json()[
        "key"
    ]
    r = http.post("/api/faces", files=upload(), headers={"X-API-Key": reader})
    assert r.status_code == 403 and "`write`" in r.json()["detail"]
    r = http.get("/api/keys", headers={"X-API-Key": writer})
    assert r.status_code == 403 and "`admin`" in r.json()["detail"]
    listed = http.get("/api/keys", headers={"X-API-Key": admin}).json()["keys"]
    assert [(k["name"], k["scopes"]) for k in listed] == [
        ("ops", ["admin"]),
        ("importer", ["write"]),
        ("viewer", ["search"]),
    ]
    assert all(set(k) == {"name", "scopes", "created", "last_used"} for k in listed)
    assert listed[1]["last_used"] is not None
    assert (
        http.post("/api/keys", json={"name": "viewer", "scopes": ["search"]}, headers={"X-API-Key": admin}).status_code
        == 409
    )

    # `list` shows names, never keys; revoking with the command takes effect within seconds.
    shown = keys_command(settings.state_dir, "list")
    assert shown.returncode == 0 and "importer" in shown.stdout and "write" in shown.stdout
    assert writer not in shown.stdout and admin not in shown.stdout
    assert keys_command(settings.state_dir, "revoke", "importer").returncode == 0
    wait_until(
        lambda: http.post("/api/faces", files=upload(), headers={"X-API-Key": writer}).status_code == 401,
        what="the key revoked by the command refused",
    )
    assert http.delete("/api/keys/viewer", headers={"X-API-Key": admin}).status_code == 200
    assert http.get("/api/heads", headers={"X-API-Key": reader}).status_code == 401  # revoked: at once here
    assert http.delete("/api/keys/viewer", headers={"X-API-Key": admin}).status_code == 404
    http.close()


def test_keys_command_help_and_errors(tmp_path: Path) -> None:
    for args in (("--help",), ("create", "--help"), ("list", "--help"), ("revoke", "--help")):
        shown = keys_command(tmp_path, *args)
        assert shown.returncode == 0 and "usage: python -m app.keys" in shown.stdout, args
    assert "--scope" in keys_command(tmp_path, "create", "--help").stdout
    bad = keys_command(tmp_path, "create", "--name", "x", "--scope", "root")
    assert bad.returncode == 1 and "unknown scope 'root'" in bad.stderr and bad.stdout == ""
    assert keys_command(tmp_path, "revoke", "nobody").returncode == 1


def test_auth_reads_key(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(auth_reads="key")
    indexed = client.post("/api/faces", files=upload(Photos.players))  # protected mode: loopback may
    assert indexed.status_code == 201
    admin = {"X-API-Key": client.post("/api/keys", json={"name": "ops", "scopes": ["admin"]}).json()["key"]}
    reader = client.post("/api/keys", json={"name": "viewer", "scopes": ["search"]}, headers=admin).json()["key"]
    writer = client.post("/api/keys", json={"name": "importer", "scopes": ["write"]}, headers=admin).json()["key"]
    r = client.post("/api/search", files=upload())
    assert r.status_code == 401 and "`search`" in r.json()["detail"]
    assert client.get("/api/heads").status_code == 401 and client.get("/status").status_code == 401
    assert client.post("/api/search", files=upload(), headers={"X-API-Key": writer}).status_code == 403
    found = client.post("/api/search", files=upload(), headers={"X-API-Key": reader})
    assert found.status_code == 200
    thumb = found.json()["faces"][0]["matches"][0]["thumb_url"]
    assert client.get(thumb).status_code == 401 and client.get(thumb, headers={"X-API-Key": reader}).status_code == 200
    page = client.get("/")  # the page itself is open: it asks for the key and keeps it in the tab's session
    assert page.status_code == 200 and 'data-key="required"' in page.text and 'id="api-key"' in page.text
    assert "sessionStorage" in client.get("/static/common.js").text  # the key handling the pages share
    assert client.get("/health").status_code == 200
    # /metrics is a read too (key names, collection size): a search key, like /status.
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": reader}).status_code == 200


def test_page_asks_for_no_key_when_reads_are_open(client: TestClient) -> None:
    page = client.get("/")
    assert 'data-key=""' in page.text and '<form id="key-form" hidden>' in page.text


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    # Per hour: however slow the machine, the six requests fall in one window of the moving-window limiter.
    settings = make_settings(tmp_path / "state", rate_limit="5/hour")
    with live_service(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        key = http.post("/api/keys", json={"name": "ops", "scopes": ["admin"]})
        assert key.status_code == 201  # the first request of this address
        answers = [http.get("/api/heads") for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 4 + [429]
        limited = answers[4]
        assert limited.json()["error"] == "rate_limited" and "RATE_LIMIT 5/hour" in limited.json()["detail"]
        assert 3000 < int(limited.headers["Retry-After"]) <= 3600  # when the first of the five leaves the window
        assert all(http.get("/health").status_code == 200 for _ in range(10))  # not counted
        assert http.get("/metrics").status_code == 200
        headers = {"X-API-Key": key.json()["key"]}  # counted per key name: a keyed client has its own window
        assert [http.get("/api/heads", headers=headers).status_code for _ in range(6)] == [200] * 5 + [429]


def test_rate_limited_upload_is_refused_before_its_body_is_read(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(rate_limit="2/minute")
    assert [client.get("/api/heads").status_code for _ in range(2)] == [200, 200]
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(8):
            sent += 1
            yield b"\xff" * 2**20

    r = client.post("/api/search", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert sent == 0


def test_every_route_is_in_the_access_table(client: TestClient) -> None:
    schema_paths = client.get("/openapi.json").json()["paths"]
    routes = {(m.upper(), p) for p, ops in schema_paths.items() for m in ops}
    routes |= {("GET", "/"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")}
    assert routes <= set(ROUTE_SCOPES), sorted(routes - set(ROUTE_SCOPES))
    assert route_scope("GET", "/static/app.js") is None and route_scope("HEAD", "/health") is None
    assert route_scope("GET", "/not/a/route") == "admin" and route_scope("PUT", "/api/faces") == "admin"


def test_muting_the_request_log_keeps_the_key_audit_lines(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """Before: the request log was `app.access`, the parent of the key audit log `app.access.keys`: muting one
    (LOG_LEVEL per logger, or `disabled`) muted key creations and revocations too."""
    request_log = logging.getLogger(access_log.name)
    with caplog.at_level(logging.INFO, logger="app"):
        request_log.setLevel(logging.WARNING)  # as an operator mutes the per-request lines
        try:
            created = client.post("/api/keys", json={"name": "ops", "scopes": ["admin"]})
            assert created.status_code == 201
            assert client.delete("/api/keys/ops", headers={"X-API-Key": created.json()["key"]}).status_code == 200
        finally:
            request_log.setLevel(logging.NOTSET)
    audit = [r.getMessage() for r in caplog.records if r.name == "app.access.keys"]
    assert any("'ops' created" in m for m in audit) and any("'ops' revoked" in m for m in audit), audit
    assert not [r for r in caplog.records if r.name == access_log.name]  # muted
    assert not access_log.name.startswith("app.access")
