"""The people page's API and shell over HTTP (no browser; the page itself: test_people_page.py): the collection at
a glance (GET /api/people/overview), the stored faces nearest to a stored one (GET /api/faces/{id}/similar), and
GET /people's HTML with the nav shared by the three pages."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.access import Scope
from app.api.auth import route_scope

ENROLLED = {"img1.jpg": "Alice", "img2.jpg": "Alice", "img4.jpg": "Alice", "img3.jpg": "Bob", "img12.jpg": "Bob"}
NOBODY = "img8.jpg"  # indexed without a subject


@pytest.fixture
def people(client: TestClient, eval_dir: Path) -> dict[str, list[str]]:
    """Alice's 3 faces, Bob's 2 and one face without a subject (""): their ids."""
    faces: dict[str, list[str]] = {"Alice": [], "Bob": [], "": []}
    for name, subject in [*ENROLLED.items(), (NOBODY, None)]:
        data = {"subject": subject} if subject else {}
        r = client.post("/api/faces", files={"file": (name, (eval_dir / name).read_bytes(), "image/jpeg")}, data=data)
        assert r.status_code == 201, r.text
        faces[subject or ""] += r.json()["ids"]
    return faces


def test_overview_counts_faces_people_unknown_faces_and_clusters(
    client: TestClient,
    people: dict[str, list[str]],
) -> None:
    overview = client.get("/api/people/overview").json()
    status = client.get("/status").json()
    assert {k: overview[k] for k in ("faces", "subjects", "unknown_faces", "clusters", "unclustered")} == {
        "faces": 6,
        "subjects": 2,
        "unknown_faces": 1,
        "clusters": 0,
        "unclustered": 1,
    }
    assert overview["index"] == {
        "collection": status["collection"],
        "backend": status["backend"],
        "vectors": status["vectors"],
        "indexed_vectors": status["indexed_vectors"],
        "status": status["status"],
        "index_building": status["index_building"],
        "unindexed": status["unindexed"],
    }
    assert overview["last_cluster_job"] is None
    # A face taken from Bob becomes an unknown face.
    assert client.post(f"/api/faces/{people['Bob'][0]}/subject", json={"subject": None}).status_code == 200
    moved = client.get("/api/people/overview").json()
    assert (moved["subjects"], moved["unknown_faces"], moved["unclustered"]) == (2, 2, 2)
    # Clusters are the `cluster` ids (payload, as the clustering job writes them) of faces without a subject; a
    # named face's cluster is not one to name.
    store = client.app.state.people.service.store  # type: ignore[attr-defined]
    store.set_payload([people[""][0], people["Bob"][0]], {"cluster": "c1"})
    store.set_payload([people["Alice"][0]], {"cluster": "c2"})
    clustered = client.get("/api/people/overview").json()
    assert (clustered["unknown_faces"], clustered["clusters"], clustered["unclustered"]) == (2, 1, 0)


def test_overview_of_an_empty_collection(client: TestClient) -> None:
    overview = client.get("/api/people/overview").json()
    assert [overview[k] for k in ("faces", "subjects", "unknown_faces", "clusters", "unclustered")] == [0] * 5
    assert overview["index"]["vectors"] == 0


def test_similar_faces_of_a_stored_face(client: TestClient, people: dict[str, list[str]]) -> None:
    alice = people["Alice"][0]
    found = client.get(f"/api/faces/{alice}/similar").json()
    assert found["face"]["id"] == alice and found["face"]["subject"] == "Alice"
    matches = found["matches"]
    assert alice not in [m["id"] for m in matches]  # itself left out
    assert len(matches) == 5  # every other stored face (the default limit is 12)
    assert [m["subject"] for m in matches[:2]] == ["Alice", "Alice"]
    assert all(m["same_person"] for m in matches[:2])
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    assert all(m["same_person"] == (m["score"] >= found["threshold"]) for m in matches)
    assert not any(m["same_person"] for m in matches if m["subject"] == "Bob")
    assert len(client.get(f"/api/faces/{alice}/similar", params={"limit": 2}).json()["matches"]) == 2
    # Feedback on a match names the stored face as the query.
    r = client.post("/api/feedback", json={"query": alice, "match_id": matches[0]["id"], "same_person": True})
    assert r.status_code == 201 and r.json()["query_face"] == alice
    # Unknown, malformed or out-of-bounds: a clear 4xx.
    missing = client.get("/api/faces/00000000-0000-0000-0000-000000000000/similar")
    assert missing.status_code == 404 and "no face with id" in missing.json()["detail"]
    assert client.get("/api/faces/not-a-face/similar").status_code in (400, 404)
    assert client.get(f"/api/faces/{alice}/similar", params={"limit": 0}).status_code == 422


def nav_links(html: str) -> list[str]:
    nav = re.search(r'<nav class="site".*?</nav>', html, re.S)
    assert nav, "the page has no site nav"
    return re.findall(r'href="([^"]+)"', nav.group(0))


def test_people_page_html(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory()
    page = client.get("/people")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<a href="/people" aria-current="page">People</a>' in html
    assert '<script type="module" src="/static/people.js"></script>' in html
    assert re.search(r'<form id="key-form"\s+hidden>', html)  # no key needed: the form starts hidden
    for element in ('id="overview"', 'id="people"', 'id="person"', 'id="clusters"', '<dialog id="dialog"'):
        assert element in html
    for path in ("/", "/people", "/live"):  # the three pages link each other
        assert nav_links(client.get(path).text)[:3] == ["/", "/people", "/live"]
    for asset in ("/static/people.js", "/static/common.js", "/static/people.css"):
        assert client.get(asset).status_code == 200


def test_people_page_under_auth_reads_key(client_factory: Callable[..., TestClient]) -> None:
    """The shell holds no data: it is served without a key and asks for one; the data routes need it."""
    client = client_factory(auth_reads="key")
    html = client.get("/people").text
    assert 'data-key="required"' in html and not re.search(r'<form id="key-form"\s+hidden>', html)
    key = client.post("/api/keys", json={"name": "viewer", "scopes": ["search"]}).json()["key"]  # protected mode ends
    assert client.get("/api/people/overview").status_code == 401
    assert client.get("/api/people/overview", headers={"X-API-Key": key}).status_code == 200


def test_scopes_of_the_page_routes() -> None:
    assert route_scope("GET", "/people") is None  # public: the page asks for the key itself
    assert route_scope("GET", "/api/people/overview") is Scope.SEARCH
    assert route_scope("GET", "/api/faces/0/similar") is Scope.SEARCH
