"""Clusters over the real app (real models on the labelled eval photos, real Qdrant Edge, the real job manager):
POST /api/clusters starts a job of kind `cluster` that /api/jobs lists; the clusters match the people in the
photos; name -> subject, merge, take a face out (it stays out after a re-run), erasure; clear 4xx; scopes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.access import Scope
from app.api.auth import route_scope
from tests.support import wait_until

ALICE = ("img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg")  # id01
CAROL = ("img8.jpg", "img9.jpg", "img47.jpg")  # id03
DAVE = ("img3.jpg",)  # id02: one photo, no cluster


def index(client: TestClient, folder: Path, name: str, subject: str | None = None) -> str:
    data = {"subject": subject} if subject else {}
    r = client.post("/api/faces", files={"file": (name, (folder / name).read_bytes(), "image/jpeg")}, data=data)
    assert r.status_code == 201, r.text
    ids: list[str] = r.json()["ids"]
    assert len(ids) == 1
    return ids[0]


def cluster_now(client: TestClient) -> dict[str, Any]:
    r = client.post("/api/clusters")
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    assert job["kind"] == "cluster" and job["status"] in ("pending", "processing", "completed")

    def finished() -> bool:
        job.update(client.get(f"/api/jobs/{job['id']}").json())
        return job["status"] in ("completed", "failed", "cancelled")

    wait_until(finished, seconds=120, what="the clustering job")
    assert job["status"] == "completed", job
    return job


@pytest.fixture
def faces(client: TestClient, eval_dir: Path) -> dict[str, list[str]]:
    return {
        "alice": [index(client, eval_dir, n) for n in ALICE],
        "carol": [index(client, eval_dir, n) for n in CAROL],
        "dave": [index(client, eval_dir, n) for n in DAVE],
    }


def clusters_by_size(client: TestClient) -> dict[str, Any]:
    r = client.get("/api/clusters")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_job_lists_clusters_and_details(client: TestClient, faces: dict[str, list[str]]) -> None:
    assert clusters_by_size(client)["job"] is None
    job = cluster_now(client)
    assert job["detail"]["clustered"] == 7 and job["detail"]["new_clusters"] == 2
    assert job["id"] in {j["id"] for j in client.get("/api/jobs").json()["jobs"] if j["kind"] == "cluster"}

    listed = clusters_by_size(client)
    assert listed["total"] == 2 and listed["unclustered"] == 1 and listed["job"]["id"] == job["id"]
    big, small = listed["clusters"]
    assert (big["size"], small["size"]) == (4, 3)
    assert 0.5 < big["cohesion"] <= 1.0
    assert {s["id"] for s in big["samples"]} <= set(faces["alice"])
    assert client.get(big["samples"][0]["thumbnail"]).headers["content-type"] == "image/jpeg"
    assert clusters_by_size(client) | {"job": None} == listed | {"job": None}
    assert client.get("/api/clusters", params={"min_size": 4}).json()["total"] == 1

    detail = client.get(f"/api/clusters/{small['id']}").json()
    assert {f["id"] for f in detail["faces"]} == set(faces["carol"])
    assert {f["file"] for f in detail["faces"]} == set(CAROL)
    assert all("quality" in f for f in detail["faces"])

    again = cluster_now(client)  # nothing new: every cluster kept, nothing added
    assert again["detail"]["clustered"] == 0
    assert [c["id"] for c in clusters_by_size(client)["clusters"]] == [big["id"], small["id"]]


def test_name_merge_take_out_and_erase(client: TestClient, faces: dict[str, list[str]], eval_dir: Path) -> None:
    cluster_now(client)
    big, small = clusters_by_size(client)["clusters"]

    out = client.delete(f"/api/clusters/{big['id']}/faces/{faces['alice'][0]}")
    assert out.status_code == 200, out.text
    assert out.json()["size"] == 3 and faces["alice"][0] not in {f["id"] for f in out.json()["faces"]}
    index(client, eval_dir, "img6.jpg")  # another photo of Alice
    cluster_now(client)
    members = {f["id"] for f in client.get(f"/api/clusters/{big['id']}").json()["faces"]}
    assert len(members) == 4 and faces["alice"][0] not in members  # taken out stays out; the new face joined

    assert client.delete(f"/api/faces/{faces['alice'][1]}").status_code == 200  # erasure
    after = client.get(f"/api/clusters/{big['id']}").json()
    assert after["size"] == 3 and faces["alice"][1] not in {f["id"] for f in after["faces"]}
    listed = clusters_by_size(client)["clusters"][0]
    assert listed["size"] == 3 and faces["alice"][1] not in {s["id"] for s in listed["samples"]}

    merged = client.post(f"/api/clusters/{small['id']}/merge", json={"into": big["id"]})
    assert merged.status_code == 200, merged.text
    assert merged.json()["id"] == big["id"] and merged.json()["size"] == 6
    assert client.get(f"/api/clusters/{small['id']}").status_code == 404

    named = client.post(f"/api/clusters/{big['id']}/name", json={"name": "Alice"})
    assert named.status_code == 200, named.text
    assert named.json()["name"] == "Alice" and named.json()["faces"] == 6
    assert client.get("/api/subjects/Alice").json()["faces"] == 6
    assert clusters_by_size(client)["total"] == 0
    assert client.get(f"/api/clusters/{big['id']}").status_code == 404


def test_bad_requests_name_the_problem(client: TestClient, faces: dict[str, list[str]]) -> None:
    cluster_now(client)
    big, small = clusters_by_size(client)["clusters"]
    unknown = client.get("/api/clusters/0123456789abcdef")
    assert unknown.status_code == 404 and "no cluster '0123456789abcdef'" in unknown.json()["detail"]
    assert client.post("/api/clusters/nope/name", json={"name": "Alice"}).status_code == 404
    bad_name = client.post(f"/api/clusters/{big['id']}/name", json={"name": "a/b"})
    assert bad_name.status_code == 400 and "characters a name may not have" in bad_name.json()["detail"]
    assert client.post(f"/api/clusters/{big['id']}/name", json={"name": ""}).status_code == 400
    assert client.post(f"/api/clusters/{big['id']}/name", json={}).status_code == 422
    itself = client.post(f"/api/clusters/{big['id']}/merge", json={"into": big["id"]})
    assert itself.status_code == 400 and "into itself" in itself.json()["detail"]
    nowhere = client.post(f"/api/clusters/{big['id']}/merge", json={"into": "0123456789abcdef"})
    assert nowhere.status_code == 404 and "to merge into" in nowhere.json()["detail"]
    stranger = client.delete(f"/api/clusters/{big['id']}/faces/{faces['carol'][0]}")
    assert stranger.status_code == 404 and "is not in cluster" in stranger.json()["detail"]
    assert client.delete(f"/api/clusters/{big['id']}/faces/not-a-face").status_code in (400, 404)
    assert client.get("/api/clusters", params={"limit": 0}).status_code == 422
    assert client.get("/api/clusters", params={"offset": 10**20}).status_code == 422  # was a 500 (SQLite int)
    assert [c["size"] for c in clusters_by_size(client)["clusters"]] == [4, 3]  # nothing changed


def test_cluster_jobs_cancel_and_are_listed_with_their_kind(client: TestClient, faces: dict[str, list[str]]) -> None:
    first = client.post("/api/clusters").json()
    second = client.post("/api/clusters").json()
    if second["status"] in ("pending", "processing"):
        assert second["id"] == first["id"]  # the one pending or running is answered, not a second one
    cancelled = client.delete(f"/api/jobs/{first['id']}").json()
    assert cancelled["kind"] == "cluster" and cancelled["status"] in ("cancelled", "completed")
    kinds = {j["kind"] for j in client.get("/api/jobs").json()["jobs"]}
    assert kinds == {"cluster"}
    cluster_now(client)  # after a cancel, a new job finishes the work
    assert clusters_by_size(client)["total"] == 2


def test_every_cluster_route_has_its_scope() -> None:
    assert route_scope("GET", "/api/clusters") is Scope.SEARCH
    assert route_scope("GET", "/api/clusters/0123456789abcdef") is Scope.SEARCH
    for method, path in (
        ("POST", "/api/clusters"),
        ("POST", "/api/clusters/x/name"),
        ("POST", "/api/clusters/x/merge"),
        ("DELETE", "/api/clusters/x/faces/y"),
    ):
        assert route_scope(method, path) is Scope.WRITE
