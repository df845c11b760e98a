"""GET /live in a real browser: Debian's Chromium driven by Playwright, with a fake camera that shows a face (a
Y4M made here from a real photo). The page must stream frames over /ws (the server counts them) and draw the
face's box.

Skips when chromium or playwright is missing (apt-get install chromium; pip install -e '.[test]'), but fails
under CI (the CI variable set) when chromium is there and the test still cannot run."""

from __future__ import annotations

import importlib.util
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.support import Photos, live_service, make_settings, one_face_frame

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FAKE_CAMERA_FLAGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def cannot_run(reason: str) -> None:
    """Skip, or fail under CI when chromium is installed: a browser test that silently skips there proves nothing."""
    if os.environ.get("CI") and CHROMIUM is not None:
        pytest.fail(f"CI has chromium ({CHROMIUM}) but the browser test cannot run: {reason}")
    pytest.skip(reason)


def write_y4m(path: Path, bgr: np.ndarray, frames: int = 10) -> Path:
    """A YUV4MPEG2 video (4:2:0, 10 fps) of the same picture, what Chromium's fake camera plays in a loop."""
    height, width = bgr.shape[:2]
    planes = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes()  # Y, then U, then V: one frame
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + planes)
    return path


def test_live_page_streams_the_camera_and_draws_the_face(tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it where it can)")
    if importlib.util.find_spec("playwright") is None:
        cannot_run("playwright is not installed (pip install -e '.[test]')")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    frame = cv2.imdecode(np.frombuffer(one_face_frame(), np.uint8), cv2.IMREAD_COLOR)
    camera = write_y4m(tmp_path / "face.y4m", frame)
    with live_service(make_settings(tmp_path / "state")) as url, ExitStack() as stack:
        try:
            playwright = stack.enter_context(sync_playwright())
        except Exception as exc:  # its node driver did not start
            cannot_run(f"playwright did not start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        indexed = httpx.post(
            f"{url}/api/faces",
            files={"file": ("players.jpg", Photos.players.read_bytes())},
            data={"subject": "Yao Ming"},
            timeout=60,
        )
        assert indexed.status_code == 201, indexed.text
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=[*FAKE_CAMERA_FLAGS, f"--use-file-for-fake-video-capture={camera}"]
            )
        except PlaywrightError as exc:
            cannot_run(f"chromium did not start under playwright: {str(exc).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/live")
            page.click("#camera")
            # Several answers in a row: the page keeps sending one frame per answer.
            page.wait_for_function("Number(document.getElementById('result').dataset.frames) >= 3", timeout=25_000)
            readout = page.locator("#result")
            assert readout.get_attribute("data-faces") == "1" and readout.get_attribute("data-boxes") == "1"
            assert readout.get_attribute("data-crowd") == "low"
            assert readout.get_attribute("data-match") == "Yao Ming"  # the closest stored face, named on the box
            page.screenshot(path=str(tmp_path / "live.png"))
            # A dropped socket comes back by itself (after a backoff) and the frames flow again.
            before = int(readout.get_attribute("data-frames") or 0)
            page.evaluate("window.oceanoLive.ws.close(4000, 'dropped by the test')")
            page.wait_for_function(
                f"Number(document.getElementById('result').dataset.frames) >= {before + 2}", timeout=15_000
            )
            assert errors == []
        finally:
            browser.close()
        stats = httpx.get(f"{url}/api/stats").json()
        assert stats["total_frames_processed"] >= 5 and stats["total_frames_failed"] == 0
        assert stats["total_connections"] == 2  # the page's first socket, and the one it reconnected


def test_live_page_sends_the_key_in_the_handshake_not_the_url(tmp_path: Path) -> None:
    """AUTH_READS=key and the search page's key in the tab: the live page's sockets carry it as the `oceano.key.`
    subprotocol, never in their URL (which servers and proxies log), and the frames flow."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it where it can)")
    if importlib.util.find_spec("playwright") is None:
        cannot_run("playwright is not installed (pip install -e '.[test]')")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from app.access.keys import KEYS_FILE, KeyStore

    state = tmp_path / "state"
    store = KeyStore(state / KEYS_FILE)
    _, key = store.create("kiosk", ["search"])
    store.close()
    frame = cv2.imdecode(np.frombuffer(one_face_frame(), np.uint8), cv2.IMREAD_COLOR)
    camera = write_y4m(tmp_path / "face.y4m", frame)
    with live_service(make_settings(state, auth_reads="key")) as url, ExitStack() as stack:
        try:
            playwright = stack.enter_context(sync_playwright())
        except Exception as exc:  # its node driver did not start
            cannot_run(f"playwright did not start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=[*FAKE_CAMERA_FLAGS, f"--use-file-for-fake-video-capture={camera}"]
            )
        except PlaywrightError as exc:
            cannot_run(f"chromium did not start under playwright: {str(exc).splitlines()[0]}")
        try:
            page = browser.new_page()
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.add_init_script(f"sessionStorage.setItem('oceano-api-key', {key!r})")
            page.goto(f"{url}/live")
            page.click("#camera")
            page.wait_for_function("Number(document.getElementById('result').dataset.frames) >= 2", timeout=25_000)
            assert sockets and all("key" not in socket_url and socket_url.endswith("/ws") for socket_url in sockets)
        finally:
            browser.close()
        stats = httpx.get(f"{url}/api/stats", headers={"X-API-Key": key}).json()
        assert stats["total_frames_processed"] >= 2 and stats["total_connections"] == 1
