"""Trust: an upload never deletes faces it did not create; erasure leaves nothing served (real app, real store)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from tests.support import Photos, small_tmpfs


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
    assert client.delete("/api/faces", params={"subject": "Team"}).status_code == 404
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
            assert not [p for p in (mount / "thumbs").rglob("*") if p.is_file()]  # nothing half-written
            (mount / "ballast").unlink()
            assert client.post("/api/faces", files=upload(Photos.t1)).status_code == 201
        finally:
            client.__exit__(None, None, None)
