"""Slow clients against the real `python -m app` (uvicorn as app.__main__ sets it up), over real sockets: a request
head or body sent a byte at a time is cut off (HEADER_TIMEOUT, BODY_TIMEOUT), one address cannot hold more than
MAX_CLIENT_CONNECTIONS, and /health keeps answering while hundreds of slow sockets are open.

The deadlines are set short here (2 s and 3 s) so that the test is quick; every wait in it has a generous bound of
its own (DEADLINE), and nothing is asserted about how long anything took."""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.support import ServiceProcess, service_process

DEADLINE = 60.0  # seconds any one wait here may take at most: far past the deadlines under test
PER_CLIENT = 20
# Each attack comes from an address of its own on the loopback network (127.0.0.0/8 is all local on Linux), so
# that the per-address bound it meets is not shared with the test's own requests, which come from 127.0.0.1.
HEADER_ATTACKER, LIMITED, CROWD, BODY_ATTACKER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
CROWD_SIZE = 300


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "HEADER_TIMEOUT": "2",
        "BODY_TIMEOUT": "3",
        "MAX_CLIENT_CONNECTIONS": str(PER_CLIENT),
        "FORWARDED_ALLOW_IPS": "",  # no proxy: every loopback peer is a client, counted
        # Low, so that the crowd below would take every slot of an unguarded server (as 1,100 take 1,024).
        "UVICORN_LIMIT_CONCURRENCY": "100",
        "LOG_LEVEL": "info",
    }
    with service_process(tmp_path_factory.mktemp("state"), env) as running:
        yield running


def address(service: ServiceProcess) -> tuple[str, int]:
    parts = urlsplit(service.url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def connect_from(source: str, service: ServiceProcess) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(DEADLINE)
    sock.connect(address(service))
    return sock


def read_until_closed(sock: socket.socket, *, drip: bytes = b"", every: float = 0.25) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection (bounded by DEADLINE), sending one byte of
    `drip` every `every` seconds meanwhile (a slow client). Returns (bytes received, whether it was closed)."""
    received = b""
    end = time.monotonic() + DEADLINE
    sent = 0
    while time.monotonic() < end:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        elif sent < len(drip):
            try:
                sock.sendall(drip[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed by the server: the next read says so
            sent += 1
    return received, False


def status_of(raw: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    return int(match.group(1)) if match else None


def test_a_slow_request_head_is_cut_off(service: ServiceProcess) -> None:
    """A head sent a byte at a time never ends (the drip is longer than the test's patience): the server answers
    408 and closes the connection. Unguarded uvicorn keeps it open for as long as bytes come."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 10_000
    with connect_from(HEADER_ATTACKER, service) as sock:
        received, closed = read_until_closed(sock, drip=head)
    assert closed, "the server kept a connection whose request head never ended"
    assert status_of(received) == 408 and b"HEADER_TIMEOUT" in received
    # An idle connection that never sends a byte is closed the same way.
    with connect_from(HEADER_ATTACKER, service) as sock:
        received, closed = read_until_closed(sock)
    assert closed and status_of(received) == 408


def test_a_slow_body_gets_408_and_the_connection_closed(service: ServiceProcess) -> None:
    """A multipart upload whose body comes at ~400 bytes a second, announced at 1 MB: 408 naming BODY_TIMEOUT,
    then the connection is closed. REQUEST_TIMEOUT alone never started: the body was never complete."""
    boundary = "slowbody"
    part_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    head = (
        f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {2**20}\r\n\r\n"
    ).encode()
    with connect_from(BODY_ATTACKER, service) as sock:
        sock.sendall(head + part_head + b"\xff\xd8\xff")
        received, closed = read_until_closed(sock, drip=b"\0" * 100_000, every=0.0025)
    assert closed, "the server kept a connection whose body never ended"
    assert status_of(received) == 408, received[:300]
    assert b"BODY_TIMEOUT" in received and b'"error":"request_timeout"' in received
    assert re.search(rb"(?i)\r\nconnection: close\r\n", received)
    assert httpx.get(f"{service.url}/health", timeout=30).status_code == 200
    # The access log records the 408 as any answer, with its route (bounded wait: the line follows the answer).
    end = time.monotonic() + DEADLINE
    while not re.search(r"app\.api\.context[^\n]*: POST /api/search 408 ", service.log_text()):
        assert time.monotonic() < end, service.log_text()[-3000:]
        time.sleep(0.1)


def test_connections_over_the_per_client_limit_are_refused(service: ServiceProcess) -> None:
    """PER_CLIENT idle connections from one address are kept; the next one is answered 429 and closed at once (long
    before HEADER_TIMEOUT could close it); another address is not affected; once one closes, a new one is served."""
    held = [connect_from(LIMITED, service) for _ in range(PER_CLIENT)]
    try:
        with connect_from(LIMITED, service) as extra:
            received, closed = read_until_closed(extra)
        assert closed and status_of(received) == 429, received[:300]
        assert b"MAX_CLIENT_CONNECTIONS" in received and re.search(rb"(?i)\r\nretry-after: 1\r\n", received)
        assert httpx.get(f"{service.url}/health", timeout=30).status_code == 200  # from 127.0.0.1: its own count
        # One of the held connections is served as any other (the limit refuses the extra one, not the first ones).
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        received, closed = read_until_closed(held[0])
        assert status_of(received) == 200 and closed
        held.pop(0).close()
        # Its slot is free again (the server counts the close as soon as it sees it: retried, bounded).
        end = time.monotonic() + DEADLINE
        while True:
            with connect_from(LIMITED, service) as again:
                again.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                received, _ = read_until_closed(again)
            if status_of(received) == 200 or time.monotonic() > end:
                break
            time.sleep(0.1)
        assert status_of(received) == 200, received[:300]
    finally:
        for sock in held:
            sock.close()


def test_health_answers_while_hundreds_of_slow_clients_are_connected(service: ServiceProcess) -> None:
    """300 connections from 15 addresses (PER_CLIENT each: none is over its limit) that send half a request head
    and then wait, three times the 100 connections this service takes at once: an unguarded server answers every
    /health 503 meanwhile (its limit counts them). Here connections without a whole head do not take those slots,
    and each is closed at HEADER_TIMEOUT: /health answers 200 throughout."""
    crowd: list[socket.socket] = []
    try:
        for i in range(CROWD_SIZE):
            sock = connect_from(f"127.0.1.{1 + i // PER_CLIENT}", service)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            crowd.append(sock)
        answers = [httpx.get(f"{service.url}/health", timeout=30).status_code for _ in range(5)]
        assert answers == [200] * 5
        # Every crowd socket is closed by the server in the end, with a 408.
        for sock in crowd:
            received, closed = read_until_closed(sock)
            assert closed and status_of(received) == 408, received[:300]
    finally:
        for sock in crowd:
            sock.close()
    metrics = httpx.get(f"{service.url}/metrics", timeout=30).text
    timed_out = re.search(r'oceano_http_connections_refused_total\{reason="header_timeout"\} (\d+)', metrics)
    assert timed_out and float(timed_out.group(1)) >= CROWD_SIZE


def test_one_address_cannot_open_hundreds(service: ServiceProcess) -> None:
    """300 connections from one address: PER_CLIENT are kept (until HEADER_TIMEOUT), the rest answered 429 and
    closed at once; /health (another address) answers 200 meanwhile."""
    crowd: list[socket.socket] = []
    try:
        for _ in range(CROWD_SIZE):
            sock = connect_from(CROWD, service)
            with contextlib.suppress(OSError):  # refused already: fine
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            crowd.append(sock)
        assert [httpx.get(f"{service.url}/health", timeout=30).status_code for _ in range(5)] == [200] * 5
        statuses: list[int | None] = []
        for sock in crowd:
            received, closed = read_until_closed(sock)
            assert closed
            statuses.append(status_of(received))
        assert set(statuses) <= {429, 408, None}  # None: reset before the refusal could be read
        assert statuses.count(408) <= PER_CLIENT and statuses.count(429) > 0
    finally:
        for sock in crowd:
            sock.close()
    metrics = httpx.get(f"{service.url}/metrics", timeout=30).text
    refused = re.search(r'oceano_http_connections_refused_total\{reason="client_limit"\} (\d+)', metrics)
    assert refused and float(refused.group(1)) >= statuses.count(429)


def test_keep_alive_is_unchanged(service: ServiceProcess) -> None:
    """Several requests on one kept-alive connection, with pauses shorter than the keep-alive timeout but longer
    together than HEADER_TIMEOUT, are all served: the head deadline runs per request, not per connection."""
    with httpx.Client(base_url=service.url, timeout=30) as http:
        for _ in range(4):
            assert http.get("/health").status_code == 200
            time.sleep(1.0)


def test_websockets_count_against_the_limit_and_free_their_slot(service: ServiceProcess) -> None:
    """A WebSocket is a connection of its address like any other: PER_CLIENT open sockets leave no room for one
    more connection; and a closed socket frees its slot (three times PER_CLIENT opened and closed one after the
    other: every one is accepted)."""
    source = "127.0.0.9"
    ws_url = service.url.replace("http://", "ws://") + "/ws"
    for _ in range(3 * PER_CLIENT):
        with ws_connect(ws_url, sock=connect_from(source, service), open_timeout=30) as ws:
            assert json.loads(ws.recv(timeout=30))["event"] == "connected"
    with contextlib.ExitStack() as held:
        for _ in range(PER_CLIENT):
            held.enter_context(ws_connect(ws_url, sock=connect_from(source, service), open_timeout=30))
        with connect_from(source, service) as extra:
            received, closed = read_until_closed(extra)
        assert closed and status_of(received) == 429, received[:300]


def test_each_http_worker_has_the_guard(tmp_path_factory: pytest.TempPathFactory) -> None:
    """WORKERS=2: the HTTP workers run the same protocol (app.api.server.WorkerHttpProtocol), their guards counting
    in one shared table (app.core.SharedPeerCounts). An idle connection gets 408 at HEADER_TIMEOUT; 30 connections
    from one address with MAX_CLIENT_CONNECTIONS=5 keep at most 5 across both workers, the rest are answered 429;
    the refusals are counted in /metrics (summed over the processes). Before, the workers ran uvicorn's own
    protocol (every one of the 30 stayed open), then a count each (up to 2 x 5)."""
    per_client, workers, opened = 5, 2, 30
    env = {
        "WORKERS": str(workers),
        "HEADER_TIMEOUT": "2",
        "MAX_CLIENT_CONNECTIONS": str(per_client),
        "FORWARDED_ALLOW_IPS": "",
        "LOG_LEVEL": "info",
    }
    with service_process(tmp_path_factory.mktemp("workers"), env) as service:
        with connect_from(HEADER_ATTACKER, service) as sock:
            received, closed = read_until_closed(sock)
        assert closed and status_of(received) == 408 and b"HEADER_TIMEOUT" in received
        crowd: list[socket.socket] = []
        try:
            for _ in range(opened):
                sock = connect_from(CROWD, service)
                with contextlib.suppress(OSError):
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                crowd.append(sock)
            statuses = []
            for sock in crowd:
                received, closed = read_until_closed(sock)
                assert closed, "a worker kept a connection whose request head never came"
                statuses.append(status_of(received))
        finally:
            for sock in crowd:
                sock.close()
        # None: refused and reset before the 429 could be read (the refusal is still counted in /metrics).
        assert set(statuses) <= {429, 408, None} and statuses.count(429) > 0
        assert 0 < statuses.count(408) <= per_client  # held across both workers: one count
        metrics = httpx.get(f"{service.url}/metrics", timeout=30).text
        refused = re.search(r'oceano_http_connections_refused_total\{reason="client_limit"\} (\d+)', metrics)
        assert refused and float(refused.group(1)) >= opened - per_client
