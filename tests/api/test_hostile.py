"""Hostile uploads over the real app: refused from headers and byte counts, before pixels are decoded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.routing import APIRouter
from fastapi.testclient import TestClient

from app.errors import EngineBusy
from app.imaging import PixelGate
from tests.support import counting_decoders, wait_until, zero_png


def test_batch_of_flat_49mp_pngs_is_refused_from_the_headers(client: TestClient) -> None:
    png = zero_png(7000, 7000)
    files = [("files", (f"flat{i}.png", png, "image/png")) for i in range(32)]
    with counting_decoders() as decoded:
        r = client.post("/api/search/batch", files=files)
    assert r.status_code == 413 and "MAX_REQUEST_MEGAPIXELS" in r.json()["detail"], r.text
    assert not decoded  # refused from the 32 headers: no decoder ran
    with counting_decoders() as decoded:
        ok = client.post("/api/search/batch", files=files[:2])  # 98 MP together: within the request budget
    assert ok.status_code == 200 and [item["faces"] for item in ok.json()["results"]] == [[], []]
    assert sum(decoded.values()) == 2


def test_chunked_upload_over_the_limit_is_cut_off(
    client_factory: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body without Content-Length: the routes see nothing past the limit (MAX_UPLOAD_MB plus 1 MB of form).
    Counted where the routes receive it: Starlette's test client hands the app the whole body in one message,
    so what the client sent says nothing."""
    client = client_factory(max_upload_mb=1.0)
    reached = 0
    route = APIRouter.__call__

    async def counted(self: APIRouter, scope: Any, receive: Any, send: Any) -> None:
        async def counting_receive() -> Any:
            nonlocal reached
            message = await receive()
            reached += len(message.get("body", b""))
            return message

        await route(self, scope, counting_receive, send)

    monkeypatch.setattr(APIRouter, "__call__", counted)

    def body() -> Iterator[bytes]:
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for _ in range(40):  # 40 MB, no Content-Length
            yield b"\xff" * 2**20

    r = client.post("/api/search", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert reached <= 2 * 2**20, reached


def test_pixel_gate_bounds_decodes_in_flight() -> None:
    gate = PixelGate(100, timeout=0.01)
    with gate.hold(60):
        with gate.hold(40):
            assert gate.in_use == 100
        with pytest.raises(EngineBusy, match="being decoded already"), gate.hold(50):  # no room within the timeout
            raise AssertionError("no room: must not get here")
    with gate.hold(500):  # bigger than the whole bound: alone, it runs
        assert gate.in_use == 500
    assert gate.in_use == 0


def test_pixel_gate_lets_a_waiting_decode_in_when_room_is_made() -> None:
    gate = PixelGate(100, timeout=60)
    let_go = threading.Event()
    got_in: list[int] = []

    def first() -> None:
        with gate.hold(60):
            let_go.wait(60)

    def second() -> None:
        with gate.hold(50):
            got_in.append(gate.in_use)

    holder = threading.Thread(target=first)
    holder.start()
    wait_until(lambda: gate.in_use == 60, what="the first decode holding its pixels")
    waiter = threading.Thread(target=second)
    waiter.start()
    assert not got_in  # no room for 50 more while 60 of 100 are held
    let_go.set()
    holder.join(60)
    waiter.join(60)
    assert got_in == [50] and gate.in_use == 0
