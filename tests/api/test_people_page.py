"""The people page (/people) in a real browser (Debian's chromium driven by Playwright) against the live service
with labelled photos of the eval set indexed: the overview agrees with the API, a person opens with their faces,
rename, merge, move a face, delete with a confirmation, find similar faces with feedback, clusters, AUTH_READS=key,
keyboard only, and a phone-width screen. Screenshots go to OCEANO_SCREENSHOT_DIR when set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support import live_service, make_settings, require_browser

if TYPE_CHECKING:  # playwright is imported where a browser runs (it may be missing: require_browser says so)
    from playwright.sync_api import ViewportSize

# Labelled photos of the eval set (labels.csv): who they are indexed as; None: indexed without a subject.
ENROLLED: dict[str, str | None] = {
    "img1.jpg": "Alice",  # id01
    "img2.jpg": "Alice",
    "img4.jpg": "Alice",
    "img3.jpg": "Bob",  # id02
    "img12.jpg": "Bob",
    "img53.jpg": "Frank",  # id02 given to Frank by mistake: moved to Bob by the test
    "img27.jpg": "Frank",  # id10
    "img28.jpg": "Frank",
    "img8.jpg": "Carol",  # id03: renamed
    "img9.jpg": "Carol",
    "img13.jpg": "Dave",  # id04, also enrolled as "D. Smith": merged
    "img14.jpg": "D. Smith",
    "img16.jpg": "Erin",  # id05: deleted
    "img17.jpg": "Erin",
    "img42.jpg": None,  # id10 and id12 never named: unknown faces
    "img43.jpg": None,
    "img34.jpg": None,
    "img35.jpg": None,
}
PHONE: ViewportSize = {"width": 375, "height": 740}
DESKTOP: ViewportSize = {"width": 1200, "height": 850}
WAIT = 30_000  # ms: the most any step of the page waits for the service


def shots_dir(tmp: Path) -> Path:
    folder = Path(os.environ.get("OCEANO_SCREENSHOT_DIR") or tmp)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def index(url: str, folder: Path, photos: dict[str, str | None], headers: dict[str, str] | None = None) -> None:
    for name, subject in photos.items():
        data = {"subject": subject} if subject else {}
        r = httpx.post(
            f"{url}/api/faces",
            files={"file": (name, (folder / name).read_bytes())},
            data=data,
            headers=headers,
            timeout=120,
        )
        assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, eval_dir: Path) -> Iterator[str]:
    """One live service for the module's tests, with ENROLLED indexed. Each test changes only its own people."""
    require_browser()  # missing: skipped here (before any photo is indexed), a failure in CI
    with live_service(make_settings(tmp_path_factory.mktemp("people") / "state")) as url:
        index(url, eval_dir, ENROLLED)
        yield url


@contextmanager
def browser_page(viewport: ViewportSize = DESKTOP) -> Iterator[Any]:
    chromium = require_browser()
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=viewport)
            page.set_default_timeout(WAIT)
            yield page
        finally:
            browser.close()


def faces(n: int) -> str:
    return f"{n} face" if n == 1 else f"{n} faces"


def subject(url: str, name: str) -> httpx.Response:
    return httpx.get(f"{url}/api/subjects/{name}")


def thumbs_loaded(page: Any, selector: str) -> None:
    page.wait_for_function(
        f"[...document.querySelectorAll({selector!r})].length > 0 && "
        f"[...document.querySelectorAll({selector!r})].every(i => i.complete && i.naturalWidth > 0)"
    )


def open_people(page: Any, url: str) -> None:
    page.goto(f"{url}/people")
    page.wait_for_selector("#people a.person")


def open_person(page: Any, name: str) -> None:
    page.click(f"#people a.person:has(strong:text-is('{name}'))")
    page.wait_for_selector(f"#person-title:text-is('{name}')")
    page.wait_for_selector("#person-faces .face-card")


def no_horizontal_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide at {PHONE['width']} px"


def test_overview_matches_the_api(service: str, tmp_path: Path) -> None:
    with browser_page() as page:
        open_people(page, service)
        page.wait_for_function("document.querySelector('[data-stat=faces]').textContent !== '…'")
        overview = httpx.get(f"{service}/api/people/overview").json()
        shown = page.eval_on_selector_all(
            "[data-stat]", "items => Object.fromEntries(items.map(i => [i.dataset.stat, i.textContent]))"
        )
        for key in ("faces", "subjects", "unknown_faces", "clusters", "unclustered"):
            assert shown[key] == str(overview[key]), key
        index_state = overview["index"]
        assert shown["index"].endswith(f"{index_state['indexed_vectors']} of {index_state['vectors']} in the index")
        # The list shows every person with a cover and a count, as /api/subjects does.
        subjects = httpx.get(f"{service}/api/subjects").json()["subjects"]
        cards = page.eval_on_selector_all("#people a.person", "cards => cards.map(c => c.innerText.split('\\n'))")
        assert [(c[0], c[1]) for c in cards] == [(s["name"], faces(s["faces"])) for s in subjects]
        thumbs_loaded(page, "#people img")
        # The nav links the three pages, this one marked current.
        nav = page.eval_on_selector_all(
            "nav.site a", "links => links.map(a => [a.textContent, a.getAttribute('href')])"
        )
        assert nav[:3] == [["Search", "/"], ["People", "/people"], ["Live", "/live"]]
        assert page.get_attribute("nav.site a[href='/people']", "aria-current") == "page"
        page.screenshot(path=str(shots_dir(tmp_path) / "people-overview-desktop.png"), full_page=True)
        # The search box narrows the list.
        page.fill("#people-filter", "ali")
        page.press("#people-filter", "Enter")
        page.wait_for_function("document.querySelectorAll('#people a.person').length === 1")
        assert page.inner_text("#people a.person strong") == "Alice"


def test_a_person_opens_with_their_faces_and_finds_similar_ones(service: str, tmp_path: Path) -> None:
    alice = subject(service, "Alice").json()
    with browser_page() as page:
        open_people(page, service)
        open_person(page, "Alice")
        assert page.url.endswith("#person=Alice")
        files = page.eval_on_selector_all("#person-faces .file", "items => items.map(i => i.textContent)")
        assert sorted(files) == sorted(f["file"] for f in alice["face_list"]["faces"])
        assert page.inner_text("#person-summary") == faces(alice["faces"])
        # A face's quality score is shown when it has one (faces indexed before quality existed have none), marked
        # when it was under QUALITY_MIN.
        qualities = page.eval_on_selector_all(
            "#person-faces .face-card",
            "cards => cards.map(c => [c.querySelector('.file').textContent, c.querySelector('.quality')?.textContent])",
        )
        low = " (low: under QUALITY_MIN)"
        expected = [
            [f["file"], None if f.get("quality") is None else f"quality {f['quality']:.2f}{low * f['quality_flagged']}"]
            for f in alice["face_list"]["faces"]
        ]
        assert sorted(qualities) == sorted(expected)
        thumbs_loaded(page, "#person-faces img")
        page.screenshot(path=str(shots_dir(tmp_path) / "people-person-desktop.png"), full_page=True)
        # Find similar from the face of img1.jpg: Alice's other faces come first, over the threshold.
        page.click("#person-faces .face-card:has(.file:text-is('img1.jpg')) button:text('Find similar')")
        page.wait_for_selector("#similar-matches .face-card")
        first = page.locator("#similar-matches .face-card").first
        assert first.locator(".file").inner_text() == "Alice"
        assert "same" in (first.get_attribute("class") or "")
        first.locator("button[aria-label='same person']").click()
        page.wait_for_selector("#similar-matches .face-card:first-child button[aria-pressed='true']")
        thumbs_loaded(page, "#similar-matches img")
        page.screenshot(path=str(shots_dir(tmp_path) / "people-similar-desktop.png"), full_page=True)
    img1 = next(f["id"] for f in alice["face_list"]["faces"] if f["file"] == "img1.jpg")
    feedback = httpx.get(f"{service}/api/feedback").json()["feedback"]
    assert [(f["query"], f["match_subject"], f["same_person"]) for f in feedback] == [(img1, "Alice", True)]


def test_rename_merge_and_move_a_face(service: str) -> None:
    with browser_page() as page:
        open_people(page, service)
        # Rename Carol.
        open_person(page, "Carol")
        page.fill("#rename-name", "Caroline")
        page.click("#rename-form button")
        page.wait_for_selector("#person-title:text-is('Caroline')")
        assert page.inner_text("#message") == "Renamed Carol to Caroline."
        assert subject(service, "Carol").status_code == 404
        assert subject(service, "Caroline").json()["faces"] == 2
        # Renaming to another person's name is refused with the API's reason, and nothing changes.
        page.fill("#rename-name", "Alice")
        page.click("#rename-form button")
        page.wait_for_selector("#message.error")
        assert "'Alice' is already a subject: merge" in page.inner_text("#message")
        assert subject(service, "Caroline").json()["faces"] == 2
        # Merge "D. Smith" into Dave.
        page.goto(f"{service}/people#person=D.%20Smith")
        page.wait_for_selector("#person-title:text-is('D. Smith')")
        page.fill("#merge-into", "Dave")
        page.click("#merge-form button")
        page.wait_for_selector("#person-title:text-is('Dave')")
        assert subject(service, "D. Smith").status_code == 404
        assert subject(service, "Dave").json()["faces"] == 2
        # Move the face of img53.jpg (someone else) from Frank to Bob, in the dialog.
        bob_before = subject(service, "Bob").json()["faces"]
        page.click("#back")
        page.wait_for_selector("#people-list:not([hidden])")
        open_person(page, "Frank")
        page.click("#person-faces .face-card:has(.file:text-is('img53.jpg')) button:text('Move…')")
        page.wait_for_selector("#dialog[open]")
        page.fill("#dialog-input", "Bob")
        page.press("#dialog-input", "Enter")
        page.wait_for_selector("#message.done")
        assert page.inner_text("#message") == "Moved the face to Bob."
        page.wait_for_function("!document.querySelector('#person-faces').innerText.includes('img53.jpg')")
        assert subject(service, "Bob").json()["faces"] == bob_before + 1
        assert "img53.jpg" not in [f["file"] for f in subject(service, "Frank").json()["face_list"]["faces"]]


def test_delete_asks_first_cancel_keeps_confirm_deletes(service: str, tmp_path: Path) -> None:
    with browser_page() as page:
        open_people(page, service)
        open_person(page, "Erin")
        page.click("#delete-person")
        page.wait_for_selector("#dialog[open]")
        assert page.inner_text("#dialog-title") == "Delete Erin?"
        assert page.evaluate("document.activeElement.id") == "dialog-cancel"  # a destructive question starts on Cancel
        page.screenshot(path=str(shots_dir(tmp_path) / "people-delete-confirm-desktop.png"))
        page.click("#dialog-cancel")
        page.wait_for_selector("#dialog:not([open])", state="attached")
        page.click("#delete-person")
        page.wait_for_selector("#dialog[open]")
        page.keyboard.press("Escape")  # Escape cancels too
        page.wait_for_selector("#dialog:not([open])", state="attached")
        assert subject(service, "Erin").json()["faces"] == 2  # kept
        page.click("#delete-person")
        page.click("#dialog-ok")
        page.wait_for_selector("#people-list:not([hidden])")
        assert page.inner_text("#message") == "Deleted Erin (2 faces erased)."
        assert subject(service, "Erin").status_code == 404
        assert "Erin" not in page.inner_text("#people")


def test_keyboard_only_opens_a_person_and_renames(service: str) -> None:
    with browser_page() as page:
        open_people(page, service)

        def tab_to(condition: str, most: int = 60) -> None:
            for _ in range(most):
                page.keyboard.press("Tab")
                if page.evaluate(f"(() => {{ const e = document.activeElement; return {condition}; }})()"):
                    return
            raise AssertionError(f"Tab never reached: {condition}")

        tab_to("e.matches('a.person') && e.innerText.startsWith('Bob\\n')")
        # The focus is visible (a focus ring from :focus-visible).
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
        page.keyboard.press("Enter")
        page.wait_for_selector("#person-title:text-is('Bob')")
        assert page.evaluate("document.activeElement.id") == "person-title"  # the focus follows to the person
        tab_to("e.id === 'rename-name'")
        page.keyboard.type("Robert")
        page.keyboard.press("Enter")
        page.wait_for_selector("#person-title:text-is('Robert')")
        assert subject(service, "Robert").status_code == 200
        # The dialog is keyboard-usable: Tab reaches "Delete person…", Enter opens it, Escape closes it.
        tab_to("e.id === 'delete-person'")
        page.keyboard.press("Enter")
        page.wait_for_selector("#dialog[open]")
        page.keyboard.press("Escape")
        page.wait_for_selector("#dialog:not([open])", state="attached")
        assert subject(service, "Robert").status_code == 200


def test_phone_width_has_no_horizontal_scrolling(service: str, tmp_path: Path) -> None:
    with browser_page(PHONE) as page:
        open_people(page, service)
        page.wait_for_function("document.querySelector('[data-stat=faces]').textContent !== '…'")
        thumbs_loaded(page, "#people img")
        no_horizontal_scroll(page)
        page.screenshot(path=str(shots_dir(tmp_path) / "people-overview-phone.png"), full_page=True)
        open_person(page, "Alice")
        thumbs_loaded(page, "#person-faces img")
        no_horizontal_scroll(page)
        page.screenshot(path=str(shots_dir(tmp_path) / "people-person-phone.png"), full_page=True)
        page.click("#delete-person")
        page.wait_for_selector("#dialog[open]")
        no_horizontal_scroll(page)
        page.keyboard.press("Escape")
        for path in ("/", "/live"):  # the other pages with the shared nav too
            page.goto(f"{service}{path}")
            no_horizontal_scroll(page)


# Unknown faces for the clusters: three people of the eval set, each on several photos, never named.
UNKNOWN = {
    **dict.fromkeys(("img27.jpg", "img28.jpg", "img42.jpg", "img43.jpg", "img44.jpg"), None),  # id10
    **dict.fromkeys(("img34.jpg", "img35.jpg", "img36.jpg", "img37.jpg"), None),  # id12
    **dict.fromkeys(("img13.jpg", "img14.jpg", "img15.jpg", "img57.jpg", "img58.jpg"), None),  # id04
    "img1.jpg": "Alice",
    "img2.jpg": "Alice",
}


def clusters_api(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/api/clusters").json()
    return body


def test_clusters_to_name_merge_and_take_a_face_out(tmp_path: Path, eval_dir: Path) -> None:
    """The clusters section: "Find clusters" runs the job and the clusters appear; a face is taken out; a cluster
    is merged into another, one named with an existing person's name and one with a new name, each in one action.
    Without /api/clusters (404: a service without clusters) the section stays hidden."""
    require_browser()
    with live_service(make_settings(tmp_path / "state")) as url:
        index(url, eval_dir, UNKNOWN)
        with browser_page() as page:
            page.goto(f"{url}/people")
            page.wait_for_selector("#people a.person")
            if httpx.get(f"{url}/api/clusters").status_code == 404:
                page.wait_for_load_state("networkidle")
                assert page.is_hidden("#clusters")
                pytest.skip("this service has no /api/clusters: the section stays hidden (checked)")
            page.wait_for_selector("#clusters:not([hidden])")
            assert "unknown faces are in no cluster" in page.inner_text("#cluster-list")
            page.click("#cluster-run")
            page.wait_for_function("document.querySelectorAll('#cluster-list .cluster').length >= 3", timeout=120_000)
            page.wait_for_selector("#cluster-job:text('last run: completed')")
            listed = clusters_api(url)
            assert [c["id"] for c in listed["clusters"]] == page.eval_on_selector_all(
                "#cluster-list .cluster", "cards => cards.map(c => c.dataset.cluster)"
            )
            shown = page.inner_text("[data-stat=clusters]")
            glance = httpx.get(f"{url}/api/people/overview").json()
            assert shown == str(glance["clusters"]) == str(listed["total"])
            assert glance["last_cluster_job"]["id"] == listed["job"]["id"]
            assert glance["last_cluster_job"]["status"] == "completed"
            thumbs_loaded(page, "#cluster-list img")
            page.screenshot(path=str(shots_dir(tmp_path) / "people-clusters-desktop.png"), full_page=True)
            page.set_viewport_size(PHONE)
            no_horizontal_scroll(page)
            page.screenshot(path=str(shots_dir(tmp_path) / "people-clusters-phone.png"), full_page=True)
            page.set_viewport_size(DESKTOP)

            first, second, third = (c["id"] for c in listed["clusters"][:3])
            card = f"#cluster-list .cluster[data-cluster='{first}']"
            # Take a face out of the first cluster.
            size = listed["clusters"][0]["size"]
            page.click(f"{card} button:text('Show faces')")
            page.wait_for_selector(f"{card} .cluster-faces .face-card")
            page.click(f"{card} .cluster-faces .face-card:first-child button:text('Take out')")
            page.wait_for_selector("#message.done")
            assert httpx.get(f"{url}/api/clusters/{first}").json()["size"] == size - 1
            # Merge the third cluster into the second, choosing it in the dialog.
            merged = listed["clusters"][1]["size"] + listed["clusters"][2]["size"]
            page.click(f"#cluster-list .cluster[data-cluster='{third}'] button:text('Merge…')")
            page.wait_for_selector("#dialog[open]")
            page.select_option("#dialog-select", second)
            page.click("#dialog-ok")
            page.wait_for_selector(f"#cluster-list .cluster[data-cluster='{third}']", state="detached")
            assert httpx.get(f"{url}/api/clusters/{second}").json()["size"] == merged
            # Name the first cluster with an existing person's name: its faces join Alice.
            alice = subject(url, "Alice").json()["faces"]
            page.fill(f"{card} input[name=name]", "Alice")
            page.press(f"{card} input[name=name]", "Enter")
            page.wait_for_selector(f"{card}", state="detached")
            assert subject(url, "Alice").json()["faces"] == alice + size - 1
            # And the merged one with a new name, a new person.
            card = f"#cluster-list .cluster[data-cluster='{second}']"
            page.fill(f"{card} input[name=name]", "Leo")
            page.click(f"{card} button:text('Name')")
            page.wait_for_selector("#people a.person:has(strong:text-is('Leo'))")
            assert subject(url, "Leo").json()["faces"] == merged
            assert httpx.get(f"{url}/api/clusters/{second}").status_code == 404
            overview = httpx.get(f"{url}/api/people/overview").json()
            page.wait_for_function(
                f"document.querySelector('[data-stat=subjects]').textContent === '{overview['subjects']}'"
            )


def test_empty_collection_and_api_errors(tmp_path: Path) -> None:
    """An empty collection says how to fill it; an API error is shown with its `detail`."""
    require_browser()
    with live_service(make_settings(tmp_path / "state")) as url, browser_page() as page:
        page.goto(f"{url}/people")
        page.wait_for_selector("#people .empty")
        assert page.inner_text("#people .empty").startswith("No people yet: index photos with a name")
        assert page.is_visible("#overview-empty")
        assert page.inner_text("[data-stat=faces]") == "0"
        page.goto(f"{url}/people#person=Nobody")
        page.wait_for_selector("#message.error")
        assert page.inner_text("#message") == "no subject 'Nobody': no face has this subject"
        page.wait_for_selector("#people-list:not([hidden])")  # back on the list


def test_auth_reads_key(tmp_path: Path, eval_dir: Path) -> None:
    """AUTH_READS=key: the page asks for a key once and reads with it (thumbnails as blob: URLs); a change with a
    search-only key shows the API's refusal and asks for a key again; with a write key it is made."""
    require_browser()
    with live_service(make_settings(tmp_path / "state", auth_reads="key")) as url:
        admin = {"X-API-Key": httpx.post(f"{url}/api/keys", json={"name": "ops", "scopes": ["admin"]}).json()["key"]}

        def new_key(name: str, scopes: list[str]) -> str:
            r = httpx.post(f"{url}/api/keys", json={"name": name, "scopes": scopes}, headers=admin)
            key: str = r.json()["key"]
            return key

        reader, writer = new_key("viewer", ["search"]), new_key("editor", ["search", "write"])
        index(url, eval_dir, {"img1.jpg": "Alice", "img2.jpg": "Alice", "img42.jpg": None}, headers=admin)
        assert httpx.get(f"{url}/api/people/overview").status_code == 401
        with browser_page() as page:
            page.goto(f"{url}/people")
            assert page.is_visible("#key-form")
            assert "Enter an API key" in page.inner_text("#message")
            page.fill("#api-key", reader)
            page.press("#api-key", "Enter")
            page.wait_for_selector("#people a.person")
            assert page.is_hidden("#key-form")
            assert page.inner_text("[data-stat=faces]") == "3"
            page.wait_for_function(
                "[...document.querySelectorAll('#people img')].every(i => i.src.startsWith('blob:') && i.naturalWidth)"
            )
            page.reload()  # kept for the tab: asked once
            page.wait_for_selector("#people a.person")
            assert page.is_hidden("#key-form")
            open_person(page, "Alice")
            page.fill("#rename-name", "Alicia")
            page.click("#rename-form button")
            page.wait_for_selector("#message.error")
            assert "scope" in page.inner_text("#message")  # the API's detail: the key lacks the write scope
            assert page.is_visible("#key-form")
            assert page.evaluate("sessionStorage.getItem('oceano-api-key')") == reader  # still good for reading
            page.fill("#api-key", writer)
            page.press("#api-key", "Enter")
            page.fill("#rename-name", "Alicia")
            page.click("#rename-form button")
            page.wait_for_selector("#person-title:text-is('Alicia')")
        assert httpx.get(f"{url}/api/subjects/Alicia", headers=admin).json()["faces"] == 2
