"""The search page in a real browser (Debian's chromium driven by Playwright) with AUTH_READS=key: it asks for a
key once, keeps it in the tab's session, and sends it with the search and the thumbnails."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import Photos, live_service, make_settings, require_browser


def test_page_asks_for_a_key_once_and_sends_it(tmp_path: Path) -> None:
    chromium = require_browser()  # missing: skipped here, a failure in CI
    from playwright import sync_api

    settings = make_settings(tmp_path / "state", auth_reads="key")
    with live_service(settings) as url:
        admin = {"X-API-Key": httpx.post(f"{url}/api/keys", json={"name": "ops", "scopes": ["admin"]}).json()["key"]}
        reader = httpx.post(f"{url}/api/keys", json={"name": "viewer", "scopes": ["search"]}, headers=admin).json()[
            "key"
        ]
        indexed = httpx.post(
            f"{url}/api/faces", files={"file": ("players.jpg", Photos.players.read_bytes())}, headers=admin, timeout=60
        )
        assert indexed.status_code == 201
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(url)
                assert page.is_visible("#key-form")
                page.set_input_files("#file", str(Photos.yaoming))  # no key yet: the page asks for one
                page.wait_for_selector("text=Enter an API key first")
                page.fill("#api-key", reader)
                page.click("#key-form button")
                assert page.is_hidden("#key-form")
                assert page.evaluate("sessionStorage.getItem('oceano-api-key')") == reader
                page.click("#search-form button")  # the same photo again: search it now
                page.wait_for_selector("text=1 face found", timeout=60_000)
                # Thumbnails are fetched with the key (an <img> could not send it) and shown from blob: URLs.
                page.wait_for_function(
                    "[...document.querySelectorAll('.matches img')].length > 0 && "
                    "[...document.querySelectorAll('.matches img')]"
                    ".every(i => i.src.startsWith('blob:') && i.naturalWidth > 0)",
                    timeout=30_000,
                )
                page.reload()
                assert page.is_hidden("#key-form")  # kept for the tab's session: asked once
                page.evaluate("sessionStorage.setItem('oceano-api-key', 'oc_' + 'x'.repeat(43))")
                page.set_input_files("#file", str(Photos.tom_hanks))
                page.wait_for_selector("text=The API key was refused")
                assert page.is_visible("#key-form")
            finally:
                browser.close()


def test_page_shows_who_and_takes_thumbs(tmp_path: Path, eval_dir: Path) -> None:
    """The results page names the person ("Alice, same person (0.71)"), dims the matches under the threshold,
    shows the threshold, and a thumbs up is recorded as feedback. The screenshot goes to OCEANO_SCREENSHOT_DIR when
    set (else the test's tmp folder)."""
    import os

    chromium = require_browser()  # missing: skipped here, a failure in CI
    from playwright import sync_api

    settings = make_settings(tmp_path / "state")
    with live_service(settings) as url:
        for name, subject in (("img1.jpg", "Alice"), ("img2.jpg", "Alice"), ("img3.jpg", "Bob")):
            r = httpx.post(
                f"{url}/api/faces",
                files={"file": (name, (eval_dir / name).read_bytes())},
                data={"subject": subject},
                timeout=60,
            )
            assert r.status_code == 201
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 700})
                page.goto(url)
                page.set_input_files("#file", str(eval_dir / "img4.jpg"))
                page.wait_for_selector("text=1 face found", timeout=60_000)
                identity = page.inner_text(".identity")
                assert identity.startswith("Alice, same person (0.")
                assert "same person at ≥ 0.36 (default)" in page.inner_text(".summary")
                classes = page.eval_on_selector_all(".matches li", "items => items.map(i => i.className)")
                assert classes[:2] == ["same", "same"] and classes[-1] == "below"  # Bob's face is someone else
                assert page.eval_on_selector(".matches li.below", "e => getComputedStyle(e).opacity") == "0.45"
                page.click(".matches li:first-child button[data-same='true']")
                page.wait_for_selector(".matches li:first-child button[aria-pressed='true']", timeout=10_000)
                shots = Path(os.environ.get("OCEANO_SCREENSHOT_DIR") or tmp_path)
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / "people-page.png"), full_page=True)
            finally:
                browser.close()
        feedback = httpx.get(f"{url}/api/feedback").json()["feedback"]
        assert [(f["match_subject"], f["same_person"]) for f in feedback] == [("Alice", True)]
