"""Hostile and old WebSocket clients against a real server: deflate bombs and oversized messages (closed 1009,
the service's memory bounded by WS_MAX_MESSAGE_BYTES, read from /proc), key-less sockets that never authenticate
(they cannot lock keyed clients out), handshakes over RATE_LIMIT (429), and the emotion service's clients at the
root path with its class ids."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from app.access.keys import KEYS_FILE, KeyStore
from tests.support import Photos, b64, live_service, make_settings, service_process, wait_until

MB = 2**20
ATTACK_SECONDS = 300  # the key-less sockets' attack stops when the test is done, or at the latest after this
# The emotion service's numbering, which its clients keep predictions by: from 1, in this order.
EMOTION_SERVICE_IDS = {"angry": 1, "disgust": 2, "fear": 3, "happy": 4, "neutral": 5, "sad": 6, "surprise": 7}


FIRST_MESSAGE_TRIES = 5  # a key sent in a first message: tries before the test gives up


def frame_message(frame_chars: int) -> str:
    """A process_frame message whose frame is `frame_chars` base64 "A"s (zeros: no image)."""
    return json.dumps({"event": "process_frame", "data": {"frame": "A" * frame_chars}})


def close_code(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        return f"{exc.rcvd.code} {exc.rcvd.reason}"
    return type(exc).__name__


class PeakSampler:
    """The service's highest VmRSS while the block runs, sampled every 10 ms (a stand-in where the kernel does not
    let VmHWM be reset; with the reset, VmHWM is read too)."""

    def __init__(self, read: Any) -> None:
        self.read = read
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_kb = max(self.peak_kb, self.read()["VmRSS"])

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


async def send_all(url: str, message: str, *, sockets: int, messages: int) -> Counter[str]:
    """`sockets` clients at once (each offers permessage-deflate, as browsers do), each sending `messages` copies
    of `message`, then reading until it has an answer per message or is closed. How each ended, counted."""

    async def one() -> str:
        try:
            async with async_connect(url, compression="deflate", max_size=None, open_timeout=60) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 60))["event"] == "connected"
                for _ in range(messages):
                    await ws.send(message)
                codes = [json.loads(await asyncio.wait_for(ws.recv(), 120))["data"]["code"] for _ in range(messages)]
                return "answered " + ",".join(sorted(set(codes)))
        except (ConnectionClosed, WebSocketException, OSError) as exc:
            return close_code(exc)

    return Counter(await asyncio.gather(*(one() for _ in range(sockets))))


def test_deflate_bombs_and_oversized_messages_are_closed_and_memory_stays_bounded(tmp_path: Path) -> None:
    """16 sockets x 2 messages of 8 MB "A"s (a few KB each on the wire where deflate is taken) against
    WS_MAX_MESSAGE_BYTES=1 MB: every socket is closed with 1009 and a reason, and the service's peak memory
    grows by less than 4 such messages per socket. Then 16 x 2 messages just under the limit (frames that are no
    image): each answered with an error, memory within the same bound; and back within 64 MB of its level once
    they are closed."""
    limit, sockets = 1 * MB, 16
    bound_kb = (sockets * 4 * limit + 64 * MB) // 1024  # 4 messages per socket, and slack for the allocator
    with service_process(tmp_path / "state", {"WS_MAX_MESSAGE_BYTES": str(limit)}) as service:
        url = service.url.replace("http://", "ws://") + "/ws"
        warm = service.memory_kb()["VmRSS"]
        resettable = service.reset_peak()
        with PeakSampler(service.memory_kb) as sampler:
            bombs = asyncio.run(send_all(url, frame_message(8 * MB), sockets=sockets, messages=2))
        peak = max(sampler.peak_kb, service.memory_kb()["VmHWM"] if resettable else 0)
        assert all(outcome.startswith("1009 ") for outcome in bombs) and bombs.total() == sockets, bombs
        assert peak - warm < bound_kb, f"peak RSS +{(peak - warm) / 1024:.0f} MB for {bombs}"

        resettable = service.reset_peak()
        near_limit = frame_message(limit - 20 * 1024)  # a frame the limit allows, whole: decoded, then refused
        with PeakSampler(service.memory_kb) as sampler:
            answered = asyncio.run(send_all(url, near_limit, sockets=sockets, messages=2))
        peak = max(sampler.peak_kb, service.memory_kb()["VmHWM"] if resettable else 0)
        assert answered == Counter({"answered unsupported_media_type": sockets}), answered
        assert peak - warm < bound_kb, f"peak RSS +{(peak - warm) / 1024:.0f} MB for {answered}"
        # Back near its level once the sockets are closed: nothing of theirs is kept.
        deadline = time.monotonic() + 30
        while service.memory_kb()["VmRSS"] - warm > 64 * 1024:
            assert time.monotonic() < deadline, f"RSS +{(service.memory_kb()['VmRSS'] - warm) / 1024:.0f} MB held"
            time.sleep(0.2)
        assert httpx.get(f"{service.url}/health", timeout=10).status_code == 200


def test_the_app_itself_closes_a_message_over_the_limit(client_factory: Any) -> None:
    """Whatever server runs the app (the test client caps nothing): a message over WS_MAX_MESSAGE_BYTES is not
    read, the socket is closed with 1009 and the reason, after an error event that says the same."""
    client = client_factory(ws_max_message_bytes=256 * 1024)
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["data"]["max_message_bytes"] == 256 * 1024
        ws.send_text(frame_message(300 * 1024))
        error = ws.receive_json()
        assert error["data"]["code"] == "too_large" and error["data"]["details"]["ws_max_message_bytes"] == 256 * 1024
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009 and "WS_MAX_MESSAGE_BYTES" in closed.value.reason


async def idle_sockets(url: str, count: int, stop: threading.Event, closes: list[str]) -> None:
    """`count` sockets that never send anything, each reconnecting as soon as it is closed, until `stop` is set (or
    ATTACK_SECONDS pass); the close code of each close is appended to `closes` as it comes (an append is atomic:
    another thread reads its length meanwhile)."""
    deadline = time.monotonic() + ATTACK_SECONDS

    def attacking() -> bool:
        return not stop.is_set() and time.monotonic() < deadline

    async def one() -> None:
        while attacking():
            try:
                async with async_connect(url, open_timeout=30) as ws:
                    while attacking():
                        with suppress(TimeoutError):  # still waiting: look at `stop` again
                            await asyncio.wait_for(ws.recv(), 0.2)
            except (ConnectionClosed, WebSocketException, OSError) as exc:
                closes.append(close_code(exc).split()[0])

    await asyncio.gather(*(one() for _ in range(count)))


def test_key_less_sockets_do_not_lock_keyed_clients_out(tmp_path: Path) -> None:
    """AUTH_READS=key, MAX_CONCURRENT_CONNECTIONS=64: 64 sockets that never authenticate, and reconnect whenever
    they are closed, while keyed clients connect (the key in the handshake: a header, or the subprotocol the live
    page uses; or in a first message sent at once) and send a frame: each gets its detection. The key-less ones
    wait in their own WS_AUTH_PENDING places: closed 1008 past WS_AUTH_TIMEOUT, or 1013 when a newer socket took
    their place."""
    state = tmp_path / "state"
    store = KeyStore(state / KEYS_FILE)
    _, key = store.create("kiosk", ["search"])
    store.close()
    settings = make_settings(state, auth_reads="key", ws_auth_timeout=1.0, ws_auth_pending=8)
    frame = json.dumps({"event": "process_frame", "data": {"frame": b64(Photos.yaoming)}})
    with live_service(settings) as url:
        endpoint = url.replace("http://", "ws://") + "/ws"
        outcomes: list[str] = []
        closes: list[str] = []
        stop = threading.Event()
        attacker = threading.Thread(target=lambda: asyncio.run(idle_sockets(endpoint, 64, stop, closes)), daemon=True)
        attacker.start()
        try:
            # The attack in full swing, past its first burst: the key-less sockets turned away twice each on average.
            wait_until(lambda: len(closes) >= 2 * 64, seconds=120, what="128 closes of key-less sockets")
            handshake = ({"additional_headers": {"X-API-Key": key}}, {"subprotocols": ["oceano", f"oceano.key.{key}"]})
            for options in (*handshake, {}):
                # The key in a first message waits in a key-less place until that message is read: on a loaded
                # machine a newer socket may take it first (1013, try again later, by design), so that client
                # tries again, as the live page does; a few tries, never a lock-out (17 of 17 refused before).
                for _ in range(FIRST_MESSAGE_TRIES if not options else 1):
                    try:
                        with connect(endpoint, open_timeout=30, **options) as ws:  # type: ignore[arg-type]
                            if not options:  # the key in the first message, sent at once
                                ws.send(json.dumps({"command": "auth", "key": key}))
                                reply = json.loads(ws.recv(timeout=30))
                                if reply.get("type") != "auth":  # the error before a 1013 close: try again
                                    continue
                            assert json.loads(ws.recv(timeout=30))["event"] == "connected"
                            ws.send(frame)
                            outcomes.append(json.loads(ws.recv(timeout=60))["event"])
                            break
                    except ConnectionClosed as exc:
                        if not options and close_code(exc).startswith("1013"):
                            continue
                        outcomes.append(close_code(exc))
                        break
            alive_throughout = attacker.is_alive()  # the keyed clients got in while the attack went on
        finally:  # a failure above must not leave the attack running (a tight reconnect loop once the service stops)
            stop.set()
            attacker.join(60)
        assert alive_throughout and not attacker.is_alive()
        idle = Counter(closes)
        assert outcomes == ["detection_result"] * 3
        assert set(idle) <= {"1008", "1013"} and idle.total() >= 64, idle  # every key-less socket was closed
        stats = httpx.get(f"{url}/api/stats", headers={"X-API-Key": key}).json()
        assert stats["total_connections"] == 3  # the keyed clients: no key-less socket was ever served


def test_handshakes_over_the_rate_limit_are_refused(client_factory: Any) -> None:
    """RATE_LIMIT counts WebSocket handshakes as it counts HTTP requests (per client address without a key):
    past it the handshake gets the HTTP 429 with Retry-After, and no socket."""
    client: TestClient = client_factory(rate_limit="3/minute")
    for _ in range(3):
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["event"] == "connected"
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect("/ws"):
            pass
    assert refused.value.status_code == 429 and int(refused.value.headers["Retry-After"]) >= 1
    assert refused.value.json()["error"] == "rate_limited"


def test_the_emotion_service_clients_at_the_root_path(tmp_path: Path) -> None:
    """ws://HOST:PORT/ (where the emotion service listened) speaks the same protocol as /ws, and its ids: classes
    numbered from 1 (angry 1, ..., surprise 7) in `emotions` and in each prediction's `emotion_id`. GET / is still
    the page."""
    with live_service(make_settings(tmp_path / "state")) as url:
        assert "text/html" in httpx.get(url).headers["content-type"]
        with connect(url.replace("http://", "ws://") + "/", max_size=None) as ws:
            assert json.loads(ws.recv(timeout=30))["event"] == "connected"
            ws.send(json.dumps({"command": "emotions"}))
            emotions = json.loads(ws.recv(timeout=30))["emotions"]
            assert [(e["id"], e["name"]) for e in emotions] == sorted(
                (i, name) for name, i in EMOTION_SERVICE_IDS.items()
            )
            ws.send(json.dumps({"command": "predict", "image": b64(Photos.yaoming)}))
            prediction = json.loads(ws.recv(timeout=60))
            assert prediction["status"] == "success", prediction
            assert prediction["emotion_id"] == EMOTION_SERVICE_IDS[prediction["emotion_name"]]


def test_a_newer_socket_takes_the_place_of_the_one_waiting_longest(client_factory: Any, tmp_path: Path) -> None:
    """AUTH_READS=key, WS_AUTH_PENDING=1: a socket that has sent no key yet gives its place to a newer one (closed
    1013, with the reason), which sends its key at once and is served."""
    store = KeyStore(tmp_path / KEYS_FILE)
    _, key = store.create("kiosk", ["search"])
    store.close()
    client = client_factory(auth_reads="key", ws_auth_pending=1, ws_auth_timeout=30)
    with client.websocket_connect("/ws") as waiting, client.websocket_connect("/ws") as newer:
        newer.send_json({"command": "auth", "key": key})
        assert newer.receive_json() == {"type": "auth", "status": "success", "key": "kiosk"}
        assert newer.receive_json()["event"] == "connected"
        assert waiting.receive_json()["data"]["code"] == "connection_limit"
        with pytest.raises(WebSocketDisconnect) as closed:
            waiting.receive_json()
        assert closed.value.code == 1013 and "WS_AUTH_PENDING" in closed.value.reason
