"""Trust: an upload never deletes faces it did not create; erasure leaves nothing served, nor any crop behind, even
when the process is killed part-way (real app, real store, a real SIGKILL)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.engine import FaceEngine
from app.store import PointQuery
from app.store.thumbs import OWNERS_FILE
from tests.support import Photos, kill_mid_erasure, seed_subject, small_tmpfs, workspace


def upload(path: Path, name: str | None = None) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name or path.name, path.read_bytes(), "image/jpeg")}


def test_same_file_name_other_photo_keeps_both_faces(client: TestClient) -> None:
    # Phones name every camera roll IMG_0001.JPG: Bob's photo must not delete Alice's face.
    alice = client.post("/api/faces", files=upload(Photos.yaoming, "IMG_0001.JPG"), data={"subject": "Alice"})
    bob = client.post("/api/faces", files=upload(Photos.tom_hanks, "IMG_0001.JPG"), data={"subject": "Bob"})
    assert alice.status_code == bob.status_code == 201
    assert bob.json()["replaced"] == 0
    (alice_id,), (bob_id,) = alice.json()["ids"], bob.json()["ids"]
    assert client.get(f"/thumbs/{alice_id}").status_code == 200
    found = client.post("/api/search", files=upload(Photos.yaoming)).json()["faces"][0]["matches"][0]
    assert (found["id"], found["subject"], found["file"]) == (alice_id, "Alice", "IMG_0001.JPG")
    assert client.get("/status").json()["vectors"] == 2 and bob_id != alice_id


def test_replace_needs_a_source_and_replaces_only_that_source(client: TestClient) -> None:
    r = client.post("/api/faces", files=upload(Photos.yaoming), data={"replace": "true"})
    assert r.status_code == 400 and "source" in r.json()["detail"]
    first = client.post("/api/faces", files=upload(Photos.yaoming), data={"source": "crm/42", "replace": "true"})
    other = client.post("/api/faces", files=upload(Photos.t1), data={"source": "crm/43"})
    second = client.post("/api/faces", files=upload(Photos.tom_hanks), data={"source": "crm/42", "replace": "true"})
    assert second.json()["replaced"] == 1
    assert client.get(f"/thumbs/{first.json()['ids'][0]}").status_code == 404
    assert all(client.get(f"/thumbs/{i}").status_code == 200 for i in other.json()["ids"])
    assert client.get("/status").json()["vectors"] == 1 + 6


def test_same_bytes_twice_stay_one_face(client: TestClient) -> None:
    first = client.post("/api/faces", files=upload(Photos.yaoming, "a.jpg"), data={"subject": "Yao"}).json()
    again = client.post("/api/faces", files=upload(Photos.yaoming, "b.jpg"), data={"subject": "Yao Ming"}).json()
    assert first["ids"] == again["ids"] and again["replaced"] == 0
    match = client.post("/api/search", files=upload(Photos.yaoming)).json()["faces"][0]["matches"][0]
    assert (match["subject"], match["file"]) == ("Yao Ming", "b.jpg")  # the latest upload's labels
    assert client.get("/status").json()["vectors"] == 1


def test_delete_by_subject_erases_points_and_thumbnails(client: TestClient) -> None:
    kept = client.post("/api/faces", files=upload(Photos.yaoming), data={"subject": "Yao"}).json()["ids"]
    gone = client.post("/api/faces", files=upload(Photos.t1), data={"subject": "Team"}).json()["ids"]
    r = client.delete("/api/faces", params={"subject": "Team"})
    assert r.status_code == 200 and sorted(r.json()["deleted"]) == sorted(gone)
    assert all(client.get(f"/thumbs/{i}").status_code == 404 for i in gone)
    assert client.get(f"/thumbs/{kept[0]}").status_code == 200
    again = client.delete("/api/faces", params={"subject": "Team"})  # a retry answers as the erasure did
    assert again.status_code == 200 and sorted(again.json()["deleted"]) == sorted(gone)
    assert client.delete("/api/faces", params={"subject": "Nobody"}).status_code == 404
    assert client.delete("/api/faces").status_code == 400  # neither file nor subject
    assert client.delete("/api/faces", params={"subject": "Yao", "file": "x"}).status_code == 400


def test_thumbnail_is_served_only_for_a_stored_face_and_never_cached_publicly(client: TestClient) -> None:
    (face_id,) = client.post("/api/faces", files=upload(Photos.yaoming)).json()["ids"]
    thumb = client.get(f"/thumbs/{face_id}")
    assert thumb.status_code == 200 and thumb.headers["cache-control"] == "private, no-cache"
    service = client.app.state.service  # type: ignore[attr-defined]
    path = service.thumbs.path_for(face_id)
    service.store.delete([face_id])  # as a crash between the point's and the thumbnail's deletion leaves it
    assert path.is_file()
    assert client.get(f"/thumbs/{face_id}").status_code == 404


def test_thumbnails_left_staged_by_a_crash_are_settled_at_start(client_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = client_factory()
    (face_id,) = client.post("/api/faces", files=upload(Photos.yaoming)).json()["ids"]
    service = client.app.state.service  # type: ignore[attr-defined]
    final = service.thumbs.path_for(face_id)
    final.unlink()  # the crash came after the upsert, before the thumbnail moved into place
    stranded = service.thumbs.stage(face_id, b"\xff\xd8 thumbnail of a stored face")
    orphan_id = "00000000-0000-4000-8000-000000000001"
    orphan = service.thumbs.stage(orphan_id, b"\xff\xd8 thumbnail whose upsert never happened")
    client.__exit__(None, None, None)
    restarted = client_factory()
    assert not stranded.exists() and not orphan.exists()
    assert final.read_bytes() == b"\xff\xd8 thumbnail of a stored face"
    assert restarted.get(f"/thumbs/{orphan_id}").status_code == 404
    assert not list((tmp_path / "thumbs" / ".pending").iterdir())


def test_full_thumbnail_disk_answers_507_and_writes_nothing(client_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with small_tmpfs(tmp_path / "tiny", "64k") as mount:
        client = client_factory(thumbs_dir=mount / "thumbs")
        try:
            (mount / "ballast").write_bytes(b"\0" * (shutil.disk_usage(mount).free - 1024))
            r = client.post("/api/faces", files=upload(Photos.t1))
            assert r.status_code == 507 and "no space left" in r.json()["detail"], r.text
            assert client.get("/status").json()["vectors"] == 0  # no point without its thumbnail
            written = [p for p in (mount / "thumbs").rglob("*") if p.is_file() and p.name != OWNERS_FILE]
            assert not written  # nothing half-written
            (mount / "ballast").unlink()
            assert client.post("/api/faces", files=upload(Photos.t1)).status_code == 201
        finally:
            client.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------------- crash safety


def crops_of(thumbs: Path, ids: list[str]) -> list[str]:
    return [i for i in ids if (thumbs / i[:2] / f"{i}.jpg").exists()]


@pytest.mark.parametrize(
    ("hang_at", "after"),
    [("points", 0), ("crops", 0), ("crops", 57)],
    ids=["before-points", "between-points-and-crops", "mid-crops"],
)
def test_erasure_killed_part_way_is_finished_at_start_and_a_retry_answers_200(
    client_factory: Callable[..., TestClient], engine: FaceEngine, tmp_path: Path, hang_at: str, after: int
) -> None:
    # A child process erases a 150-face subject and is SIGKILLed where it stops (its marker on disk says where).
    with workspace(tmp_path, engine) as ws:
        erased = seed_subject(ws.service, "Erased", 150)
        kept = seed_subject(ws.service, "Kept", 3)
    kill_mid_erasure(tmp_path, "Erased", hang_at, after)
    thumbs = tmp_path / "thumbs"
    assert len(crops_of(thumbs, erased)) == 150 - after  # the kill left crops behind: the window was real

    client = client_factory()
    service = client.app.state.service  # type: ignore[attr-defined]
    assert not service.store.find_ids(PointQuery(subject="Erased"))
    assert not crops_of(thumbs, erased)
    assert sorted(service.store.find_ids(PointQuery(subject="Kept"))) == sorted(kept)
    assert crops_of(thumbs, kept) == kept
    retry = client.delete("/api/faces", params={"subject": "Erased"})
    assert retry.status_code == 200, retry.text
    assert sorted(retry.json()["deleted"]) == sorted(erased)


@pytest.mark.parametrize("by", ["subject", "file", "id"])
def test_a_retried_delete_finishes_an_erasure_that_failed_part_way(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    ids = client.post("/api/faces", files=upload(Photos.t1, "team.jpg"), data={"subject": "Team"}).json()["ids"]
    service = client.app.state.service  # type: ignore[attr-defined]
    remove = service.thumbs.delete
    removed: list[str] = []

    def failing_disk(face_id: str) -> None:  # the points are gone; the disk fails after one crop
        if removed:
            raise OSError(5, "Input/output error")
        remove(face_id)
        removed.append(face_id)

    monkeypatch.setattr(service.thumbs, "delete", failing_disk)
    requests = {
        "subject": ("/api/faces", {"subject": "Team"}),
        "file": ("/api/faces", {"file": "team.jpg"}),
        "id": (f"/api/faces/{ids[0]}", {}),
    }
    url, params = requests[by]
    if by == "id":  # one face: the disk fails on its crop at once
        removed.append("none yet")
    with pytest.raises(OSError):
        client.delete(url, params=params)
    monkeypatch.setattr(service.thumbs, "delete", remove)
    thumbs = service.thumbs.root
    assert crops_of(thumbs, ids)  # left behind by the failure
    retry = client.delete(url, params=params)
    assert retry.status_code == 200, retry.text
    target = ids if by != "id" else ids[:1]
    assert sorted(retry.json()["deleted"]) == sorted(target)
    assert not crops_of(thumbs, target)


def test_orphan_crops_are_removed_at_start_and_young_ones_kept(
    client_factory: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = client_factory()
    (face_id,) = client.post("/api/faces", files=upload(Photos.yaoming)).json()["ids"]
    client.__exit__(None, None, None)
    thumbs = tmp_path / "thumbs"
    old, young = "0a000000-0000-4000-8000-000000000001", "0b000000-0000-4000-8000-000000000002"
    for orphan in (old, young):
        (thumbs / orphan[:2]).mkdir(exist_ok=True)
        (thumbs / orphan[:2] / f"{orphan}.jpg").write_bytes(b"\xff\xd8 a crop whose point is gone")
    an_hour_ago = time.time() - 3600
    os.utime(thumbs / old[:2] / f"{old}.jpg", (an_hour_ago, an_hour_ago))
    os.utime(thumbs / face_id[:2] / f"{face_id}.jpg", (an_hour_ago, an_hour_ago))
    client_factory()  # the sweep runs beside the service: wait (with a deadline) for what it removes
    deadline = time.monotonic() + 60
    while crops_of(thumbs, [old]):
        assert time.monotonic() < deadline, "the orphan crop was not removed"
        time.sleep(0.05)
    assert crops_of(thumbs, [face_id, young]) == [face_id, young]


def test_a_thumbs_dir_shared_by_two_collections_is_never_swept(
    client_factory: Callable[..., TestClient], tmp_path: Path
) -> None:
    first = client_factory()
    (face_id,) = first.post("/api/faces", files=upload(Photos.yaoming)).json()["ids"]
    first.__exit__(None, None, None)
    thumbs = tmp_path / "thumbs"
    an_hour_ago = time.time() - 3600
    os.utime(thumbs / face_id[:2] / f"{face_id}.jpg", (an_hour_ago, an_hour_ago))
    # Another collection (a new model pack, say) in the same THUMBS_DIR: the first's crop is not its orphan.
    client_factory(collection_name="faces2").__exit__(None, None, None)
    assert crops_of(thumbs, [face_id]) == [face_id]
    # Nor, from now on, are the second's crops the first's orphans.
    again = client_factory()
    assert crops_of(thumbs, [face_id]) == [face_id]
    assert again.get(f"/thumbs/{face_id}").status_code == 200
