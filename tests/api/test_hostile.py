"""Hostile uploads over the real app: refused from headers and byte counts, before pixels are decoded."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from fastapi.testclient import TestClient

from app.imaging import PixelGate
from tests.support import zero_png


def test_batch_of_flat_49mp_pngs_is_refused_from_the_headers(client: TestClient) -> None:
    png = zero_png(7000, 7000)
    files = [("files", (f"flat{i}.png", png, "image/png")) for i in range(32)]
    started = time.monotonic()
    r = client.post("/api/search/batch", files=files)
    assert r.status_code == 413 and "MAX_REQUEST_MEGAPIXELS" in r.json()["detail"], r.text
    assert time.monotonic() - started < 5  # no decode: 32 x 49 MP would take far longer
    ok = client.post("/api/search/batch", files=files[:2])  # 98 MP together: within the request budget
    assert ok.status_code == 200 and [item["faces"] for item in ok.json()["results"]] == [[], []]


def test_chunked_upload_over_the_limit_is_cut_off(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(max_upload_mb=1.0)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for _ in range(40):  # 40 MB, no Content-Length
            sent += 1
            yield b"\xff" * 2**20

    r = client.post("/api/search", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_pixel_gate_bounds_decodes_in_flight() -> None:
    gate = PixelGate(100, timeout=0.2)
    with gate.hold(60):
        with gate.hold(40):
            assert gate.in_use == 100
        started = time.monotonic()
        try:
            with gate.hold(50):
                raise AssertionError("no room: must not get here")
        except Exception as exc:
            assert "being decoded already" in str(exc)
        assert time.monotonic() - started >= 0.2
    with gate.hold(500):  # bigger than the whole bound: alone, it runs
        assert gate.in_use == 500
    assert gate.in_use == 0
