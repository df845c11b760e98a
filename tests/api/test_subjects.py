"""Subjects as a resource over the real app (real models on the labelled eval photos, real Qdrant Edge): list,
detail with faces, rename, merge, move one face, erase, faces by filter; names validated; scopes from the one
table; identity on search answers; the threshold on /status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.access import Scope
from app.api.auth import route_scope

ALICE = ("img1.jpg", "img2.jpg", "img4.jpg")  # id01
BOB = ("img3.jpg", "img12.jpg")  # id02
NOBODY = "img8.jpg"  # id03, indexed without a subject


def index(client: TestClient, folder: Path, name: str, subject: str | None = None) -> list[str]:
    data = {"subject": subject} if subject else {}
    r = client.post("/api/faces", files={"file": (name, (folder / name).read_bytes(), "image/jpeg")}, data=data)
    assert r.status_code == 201, r.text
    ids: list[str] = r.json()["ids"]
    assert len(ids) == 1
    return ids


@pytest.fixture
def people(client: TestClient, eval_dir: Path) -> dict[str, list[str]]:
    faces: dict[str, list[str]] = {"Alice": [], "Bob": [], "": []}
    for name in ALICE:
        faces["Alice"] += index(client, eval_dir, name, "Alice")
    for name in BOB:
        faces["Bob"] += index(client, eval_dir, name, "Bob")
    faces[""] += index(client, eval_dir, NOBODY)
    return faces


def test_list_search_page_and_detail(client: TestClient, people: dict[str, list[str]]) -> None:
    listed = client.get("/api/subjects").json()
    assert listed["total"] == 2
    assert [(s["name"], s["faces"]) for s in listed["subjects"]] == [("Alice", 3), ("Bob", 2)]
    alice = listed["subjects"][0]
    assert alice["cover_id"] in people["Alice"]
    assert client.get(alice["cover_url"]).headers["content-type"] == "image/jpeg"
    assert alice["created"] <= alice["updated"]
    assert [s["name"] for s in client.get("/api/subjects", params={"search": "LIC"}).json()["subjects"]] == ["Alice"]
    second = client.get("/api/subjects", params={"offset": 1, "limit": 1}).json()
    assert [s["name"] for s in second["subjects"]] == ["Bob"] and second["total"] == 2

    detail = client.get("/api/subjects/Alice", params={"limit": 2}).json()
    assert detail["faces"] == 3 and len(detail["face_list"]["faces"]) == 2
    rest = client.get("/api/subjects/Alice", params={"limit": 2, "after": detail["face_list"]["next"]}).json()
    seen = [f["id"] for f in detail["face_list"]["faces"] + rest["face_list"]["faces"]]
    assert sorted(seen) == sorted(people["Alice"]) and rest["face_list"]["next"] is None
    assert client.get(rest["face_list"]["faces"][0]["thumb_url"]).status_code == 200
    assert client.get("/api/subjects/Carol").status_code == 404


def test_faces_by_filter(client: TestClient, people: dict[str, list[str]]) -> None:
    def ids(**params: object) -> list[str]:
        r = client.get("/api/faces", params=params)
        assert r.status_code == 200, r.text
        return sorted(f["id"] for f in r.json()["faces"])

    assert ids(subject="Bob") == sorted(people["Bob"])
    assert ids(no_subject=True) == people[""]
    assert ids(file=NOBODY) == people[""]
    assert ids(origin="upload") == sorted(sum(people.values(), []))
    assert ids(origin="ingest") == []
    assert client.get("/api/faces", params={"subject": "Bob", "no_subject": True}).status_code == 400
    assert client.get("/api/faces", params={"after": "not-an-id"}).status_code == 400


def test_rename_merge_move_and_erase(client: TestClient, people: dict[str, list[str]]) -> None:
    r = client.patch("/api/subjects/Alice", json={"name": "Alicia"})
    assert r.status_code == 200 and r.json()["faces"] == 3
    assert client.get("/api/subjects/Alice").status_code == 404
    assert client.patch("/api/subjects/Alice", json={"name": "Alicia"}).status_code == 200  # a retried rename
    conflict = client.patch("/api/subjects/Bob", json={"name": "Alicia"})
    assert conflict.status_code == 409 and "merge" in conflict.json()["detail"]

    merged = client.post("/api/subjects/Alicia/merge", json={"from": "Bob"})
    assert merged.status_code == 200 and merged.json()["faces"] == 5
    assert client.post("/api/subjects/Alicia/merge", json={"from": "Bob"}).status_code == 200  # retried
    assert client.post("/api/subjects/Alicia/merge", json={"from": "Zed"}).status_code == 404
    assert client.post("/api/subjects/Alicia/merge", json={"from": "Alicia"}).status_code == 400
    assert [s["name"] for s in client.get("/api/subjects").json()["subjects"]] == ["Alicia"]

    moved = people["Bob"][0]
    r = client.post(f"/api/faces/{moved}/subject", json={"subject": "Carol"})
    assert r.status_code == 200 and r.json()["subject"] == "Carol"
    cleared = people["Alice"][0]
    assert client.post(f"/api/faces/{cleared}/subject", json={"subject": None}).json()["subject"] is None
    assert sorted(f["id"] for f in client.get("/api/faces", params={"no_subject": True}).json()["faces"]) == sorted(
        [cleared, *people[""]]
    )
    assert (
        client.post("/api/faces/00000000-0000-0000-0000-000000000000/subject", json={"subject": "X"}).status_code == 404
    )

    erased = client.delete("/api/subjects/Carol")
    assert erased.status_code == 200 and erased.json()["deleted"] == [moved]
    assert client.get(f"/thumbs/{moved}").status_code == 404
    assert client.delete("/api/subjects/Carol").json()["deleted"] == [moved]  # a retry: answered as the first
    assert client.delete("/api/subjects/Nobody").status_code == 404
    assert {s["name"]: s["faces"] for s in client.get("/api/subjects").json()["subjects"]} == {"Alicia": 3}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("x" * 129, "over the limit"),
        ("<script>", "characters"),
        ("a\tb", "characters"),
        (" -a", "starts"),
    ],
)
def test_names_are_validated(client: TestClient, people: dict[str, list[str]], name: str, problem: str) -> None:
    r = client.patch("/api/subjects/Alice", json={"name": name})
    assert r.status_code == 400 and problem in r.json()["detail"], r.text
    r = client.post(f"/api/faces/{people['Bob'][0]}/subject", json={"subject": name})
    assert r.status_code == 400
    assert client.patch("/api/subjects/Alice", json={"name": "Ünïcode Namé-2 (jr.)"}).status_code == 200


def test_every_people_route_has_its_scope() -> None:
    reads = [("GET", "/api/subjects"), ("GET", "/api/subjects/Alice"), ("GET", "/api/faces"), ("GET", "/api/feedback")]
    writes = [
        ("PATCH", "/api/subjects/Alice"),
        ("POST", "/api/subjects/Alice/merge"),
        ("DELETE", "/api/subjects/Alice"),
        ("POST", "/api/faces/0/subject"),
        ("POST", "/api/feedback"),
    ]
    assert all(route_scope(m, p) is Scope.SEARCH for m, p in reads)
    assert all(route_scope(m, p) is Scope.WRITE for m, p in writes)
    assert route_scope("POST", "/api/feedback/calibrate") is Scope.ADMIN
    assert route_scope("POST", "/api/calibrate/subjects") is Scope.ADMIN


def test_search_answers_who(client_factory: Callable[..., TestClient], eval_dir: Path) -> None:
    client = client_factory(top_k=10)
    for name in ALICE:
        index(client, eval_dir, name, "Alice")
    for name in BOB:
        index(client, eval_dir, name, "Bob")
    status = client.get("/status").json()
    assert status["threshold"] == pytest.approx(0.36) and status["threshold_source"].startswith("default")

    face = client.post("/api/search", files={"file": ("q.jpg", (eval_dir / "img5.jpg").read_bytes())}).json()["faces"]
    assert len(face) == 1
    identity = face[0]["identity"]
    assert identity["subject"] == "Alice" and identity["same_person"] is True
    assert identity["threshold"] == pytest.approx(0.36) and identity["confidence"] >= 0.36
    assert face[0]["ref"].startswith("q-")
    for match in face[0]["matches"]:
        assert match["same_person"] == (match["score"] >= 0.36)
    assert {m["subject"] for m in face[0]["matches"] if m["same_person"]} == {"Alice"}

    stranger = client.post("/api/search", files={"file": ("s.jpg", (eval_dir / "img9.jpg").read_bytes())}).json()
    assert stranger["faces"][0]["identity"] is None  # id03 is enrolled under no subject

    page = client.post("/search", files={"file": ("q.jpg", (eval_dir / "img5.jpg").read_bytes())}).text
    assert "Alice, same person" in page and "0.36" in page


def test_calibration_on_the_enrolled_subjects(client: TestClient, people: dict[str, list[str]]) -> None:
    """Faces of one subject are the genuine pairs, of two subjects the impostor pairs (the face without a subject
    takes no part); `per_subject` bounds the faces of each subject; `apply` puts the threshold in force."""
    r = client.post("/api/calibrate/subjects", params={"far": 0.1})
    assert r.status_code == 200, r.text
    every = r.json()
    # Alice 3 faces, Bob 2: 3 + 1 genuine pairs, 3 x 2 impostor pairs.
    assert (every["subjects"], every["faces"], every["scored"]) == (2, 5, 5)
    assert (every["genuine_pairs"], every["impostor_pairs"], every["applied"]) == (4, 6, False)
    assert every["far"] == 0 and every["frr"] == 0  # two people told apart by the stored vectors
    assert client.get("/status").json()["threshold_source"].startswith("default")

    r = client.post("/api/calibrate/subjects", params={"far": 0.1, "per_subject": 2, "apply": True})
    bounded = r.json()
    assert (bounded["scored"], bounded["genuine_pairs"], bounded["impostor_pairs"]) == (4, 2, 4)
    status = client.get("/status").json()
    assert status["threshold"] == pytest.approx(bounded["threshold"])
    assert status["threshold_source"].startswith("calibrated: enrolled subjects (2 subjects, 4 faces)")

    r = client.post("/api/calibrate/subjects", params={"max_faces": 2})
    assert r.status_code == 422  # below the bound the route states
    assert client.delete("/api/subjects/Bob").status_code == 200
    r = client.post("/api/calibrate/subjects")
    assert r.status_code == 400 and "two subjects" in r.json()["detail"]
