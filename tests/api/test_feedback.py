"""Feedback over the real app: recorded with the key that sent it, listed a page at a time, exported as CSV and
JSON lines, 404 for a face that no longer exists, erased with its subject, and used to calibrate the threshold
(the admin route that `python -m app.calibrate --feedback` calls when the service owns the store)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.test_subjects import index


def search(client: TestClient, folder: Path, name: str) -> dict[str, object]:
    r = client.post("/api/search", files={"file": (name, (folder / name).read_bytes())})
    assert r.status_code == 200, r.text
    face: dict[str, object] = r.json()["faces"][0]
    return face


def test_feedback_recorded_listed_exported_and_erased(client: TestClient, eval_dir: Path) -> None:
    alice = index(client, eval_dir, "img1.jpg", "Alice") + index(client, eval_dir, "img2.jpg", "Alice")
    bob = index(client, eval_dir, "img3.jpg", "Bob")
    face = search(client, eval_dir, "img4.jpg")  # id01: Alice
    ref = face["ref"]
    matches = {m["id"]: m for m in face["matches"]}  # type: ignore[attr-defined]

    given = client.post("/api/feedback", json={"query": ref, "match_id": alice[0], "same_person": True})
    assert given.status_code == 201, given.text
    body = given.json()
    assert body["key"] is None and body["match_subject"] == "Alice" and body["query_face"] is None
    assert body["score"] == pytest.approx(matches[alice[0]]["score"], abs=2e-3)
    client.post("/api/feedback", json={"query": ref, "match_id": bob[0], "same_person": False})
    # A stored face as the query: its subject is recorded too.
    r = client.post("/api/feedback", json={"query": alice[1], "match_id": bob[0], "same_person": False})
    assert r.status_code == 201 and r.json()["query_subject"] == "Alice"

    unknown = "00000000-0000-0000-0000-000000000000"
    for wrong in (
        {"query": ref, "match_id": unknown, "same_person": True},
        {"query": unknown, "match_id": bob[0], "same_person": True},
        {"query": "q-0000", "match_id": bob[0], "same_person": True},
        {"query": "not a face", "match_id": bob[0], "same_person": True},
    ):
        r = client.post("/api/feedback", json=wrong)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (wrong, r.text)
    assert client.post("/api/feedback", json={"query": ref, "match_id": bob[0]}).status_code == 422

    first = client.get("/api/feedback", params={"limit": 2}).json()
    assert first["total"] == 3 and len(first["feedback"]) == 2 and first["next"] is not None
    rest = client.get("/api/feedback", params={"after": first["next"]}).json()
    assert [f["same_person"] for f in first["feedback"] + rest["feedback"]] == [True, False, False]
    assert rest["next"] is None

    exported = client.get("/api/feedback/export", params={"format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["match_id"] for r in rows] == [alice[0], bob[0], bob[0]]
    lines = client.get("/api/feedback/export", params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(line)["same_person"] for line in lines] == [True, False, False]

    # Calibration from feedback needs both kinds of pairs; with them, the threshold is measured and applied.
    r = client.post("/api/feedback/calibrate", params={"far": 0.5, "apply": True})
    assert r.status_code == 200, r.text
    measured = r.json()
    assert (measured["genuine_pairs"], measured["impostor_pairs"], measured["applied"]) == (1, 2, True)
    status = client.get("/status").json()
    assert status["threshold"] == pytest.approx(measured["threshold"])
    assert status["threshold_source"].startswith("calibrated: feedback")

    # Erasing Bob erases what was said about him.
    assert client.delete("/api/subjects/Bob").status_code == 200
    left = client.get("/api/feedback").json()["feedback"]
    assert [f["match_id"] for f in left] == [alice[0]]
    r = client.post("/api/feedback", json={"query": ref, "match_id": bob[0], "same_person": False})
    assert r.status_code == 404
    # So does erasing faces through DELETE /api/faces (by subject, or one face).
    assert client.delete("/api/faces", params={"subject": "Alice"}).status_code == 200
    assert client.get("/api/feedback").json()["total"] == 0


def test_a_page_cursor_past_sqlites_integers_is_a_422_naming_it(client: TestClient) -> None:
    """`after` is a row id: one past SQLite's 64-bit integers reached the database and answered 500 (found by
    Schemathesis: OverflowError: Python int too large to convert to SQLite INTEGER)."""
    r = client.get("/api/feedback", params={"after": 2**63})
    assert r.status_code == 422 and "after" in r.text
    r = client.get("/api/feedback", params={"after": 2**63 - 1})
    assert r.status_code == 200 and r.json()["feedback"] == []


def test_calibration_needs_both_kinds_of_pairs(client: TestClient) -> None:
    r = client.post("/api/feedback/calibrate")
    assert r.status_code == 400 and "at least one of each" in r.json()["detail"]


def test_feedback_records_the_key_that_sent_it(client: TestClient, eval_dir: Path) -> None:
    alice = index(client, eval_dir, "img1.jpg", "Alice") + index(client, eval_dir, "img2.jpg", "Alice")
    made = client.post("/api/keys", json={"name": "labeller", "scopes": ["write"]})  # loopback, no key yet
    assert made.status_code == 201, made.text
    key = {"X-API-Key": made.json()["key"]}
    reader = client.post("/api/keys", json={"name": "viewer", "scopes": ["search"]}, headers=key)
    assert reader.status_code == 403  # (a write key cannot make keys; an admin one would)
    given = client.post(
        "/api/feedback", json={"query": alice[0], "match_id": alice[1], "same_person": True}, headers=key
    )
    assert given.status_code == 201 and given.json()["key"] == "labeller"
    assert (
        client.post("/api/feedback", json={"query": alice[0], "match_id": alice[1], "same_person": True}).status_code
        == 401
    )
    assert client.get("/api/feedback", headers=key).json()["feedback"][0]["key"] == "labeller"
