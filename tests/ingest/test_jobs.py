"""app.ingest: the ingest pipeline, its resumable state and the jobs API, with the real models and Qdrant Edge."""

from __future__ import annotations

import os
import shutil
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import app.engine.model
from app.api import create_app
from app.engine import FaceEngine, InferenceGate
from app.errors import StoreUnavailable
from app.ingest import read
from app.ingest.model import STATE_FILE, FileStatus, JobStatus, RetryPolicy, RunOutcome
from app.ingest.pipeline import GPU_EXTRA_INFER_WORKERS, INFER_BATCH_SHARED_CPU, IngestJob
from app.ingest.state import IngestState
from app.ingest.walk import iter_image_files
from tests.support import (
    FIVE_FACES,
    LOOPBACK,
    NO_FACE,
    face_folder,
    held_engine_calls,
    make_settings,
    wait_until,
    workspace,
    write_variant,
)

FINISHED = {"completed", "failed", "cancelled"}


def stop_after(done: int) -> Any:
    """on_commit hook: stop the run (as Ctrl-C or a shutdown would) once `done` files are committed."""

    def hook(job: IngestJob) -> None:
        if job.progress().counts.done >= done:
            job.stop()

    return hook


# ------------------------------------------------------------------------------------------------- walk


def test_walk_is_lazy_recursive_and_filters(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    (root / "skip").mkdir()
    for rel in ("one.jpg", "a/TWO.JPEG", "a/b/three.Png", "a/b/four.webp", "skip/five.jpg", "a/six.gif"):
        (root / rel).write_bytes(b"x")
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "link.jpg").symlink_to(root / "one.jpg")

    walk = iter_image_files(root, exclude=["skip/*", "*.gif"])
    assert isinstance(walk, types.GeneratorType)  # lazy: nothing is listed before the first file is asked for
    found = {p.relative_to(root).as_posix() for p in walk}
    assert found == {"one.jpg", "a/TWO.JPEG", "a/b/three.Png", "a/b/four.webp"}

    followed = [p.relative_to(root).as_posix() for p in iter_image_files(root, follow_symlinks=True)]
    assert "link.jpg" in followed and len(followed) == len(set(followed))  # the loop is visited once
    assert list(iter_image_files(root / "one.jpg")) == [root / "one.jpg"]


# ------------------------------------------------------------------------------------------------- pipeline


def test_folder_with_corrupt_files_finishes_and_records_them(tmp_path: Path, any_engine: FaceEngine) -> None:
    root = tmp_path / "photos"
    good = face_folder(root, 4)
    write_variant(NO_FACE, root / "landscape.jpg", 0)
    (root / "truncated.jpg").write_bytes(good[0].read_bytes()[:2000])
    (root / "text.jpg").write_text("this is not a photo")
    (root / "empty.png").write_bytes(b"")
    (root / "fake.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 garbage")

    with workspace(tmp_path / "state", any_engine) as ws:
        job = ws.job(root, batch=2, workers=4)
        assert job.run() is RunOutcome.COMPLETED
        counts = job.progress().counts
        records = {Path(r.path).name: r for r in ws.state.files()}
        assert (counts.seen, counts.ingested, counts.no_face, counts.failed, counts.faces_added) == (9, 4, 1, 4, 4)
        assert {n for n, r in records.items() if r.status is FileStatus.FAILED} == {
            "truncated.jpg",
            "text.jpg",
            "empty.png",
            "fake.webp",
        }
        assert "corrupt or truncated" in (records["truncated.jpg"].reason or "")
        assert "not an image" in (records["text.jpg"].reason or "")
        assert "empty" in (records["empty.png"].reason or "")
        assert records["landscape.jpg"].status is FileStatus.NO_FACE
        assert all(records[p.name].status is FileStatus.DONE and records[p.name].faces == 1 for p in good)
        assert all(r.content_hash for n, r in records.items() if n != "empty.png")
        assert len(ws.ids()) == ws.store.count() == 4
        assert ws.thumbs() == ws.ids()
        assert sum(r["count"] for r in job.progress().top_reasons) == 4


def test_resume_after_interrupted_run_adds_no_duplicates_and_loses_nothing(
    tmp_path: Path, any_engine: FaceEngine
) -> None:
    root = tmp_path / "photos"
    face_folder(root, 8)
    shutil.copyfile(FIVE_FACES, root / "group.jpg")
    with workspace(tmp_path / "clean", any_engine) as ws:
        assert ws.job(root).run() is RunOutcome.COMPLETED
        clean_ids = ws.ids()
    assert len(clean_ids) == 8 + 5

    with workspace(tmp_path / "resumed", any_engine) as ws:
        first = ws.job(root, batch=1, workers=2, infer_batch=2, on_commit=stop_after(3))
        assert first.run() is RunOutcome.STOPPED
        done_before = first.progress().counts.done
        assert 3 <= done_before < 9
        assert len(ws.state.files()) == done_before  # nothing is marked before its points are in
        assert ws.store.count() < len(clean_ids)

        second = ws.job(root)
        assert second.run() is RunOutcome.COMPLETED
        counts = second.progress().counts
        assert counts.skipped == done_before and counts.done == 9 - done_before
        assert ws.ids() == clean_ids and ws.store.count() == len(clean_ids)
        assert {r.status for r in ws.state.files()} == {FileStatus.DONE} and len(ws.state.files()) == 9
        assert ws.thumbs() == clean_ids


def test_on_a_gpu_more_threads_prepare_and_commit_than_the_gate_lets_infer(
    tmp_path: Path, ingest_engine: FaceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU each inference thread also cuts thumbnails, builds points and commits them (work the GPU waited for
    with one thread): `python -m app.ingest` runs GPU_EXTRA_INFER_WORKERS threads more than the gate lets infer,
    and several of them do run batches. The real models are told they run on a GPU (a stand-in for one: this
    onnxruntime has only the CPU provider), so they take its layout (padded batches of 16 images)."""
    monkeypatch.setattr(app.engine.model, "uses_gpu", lambda session: True)
    gpu_engine = FaceEngine.from_settings(make_settings(tmp_path / "models"), InferenceGate(1, 30.0))
    assert gpu_engine.on_gpu and gpu_engine.detector.batch_sizes == (16,)
    root = tmp_path / "photos"
    face_folder(root, 8)
    with workspace(tmp_path / "one_thread", ingest_engine) as ws:  # the CPU engine: one thread, as before
        reference = ws.job(root)
        assert reference.infer_workers == 1
        assert reference.run() is RunOutcome.COMPLETED
        expected = ws.ids()
    with workspace(tmp_path / "gpu", gpu_engine) as ws:
        inferring: set[str] = set()
        analyze = gpu_engine.analyze_batch

        def recorded(*args: Any, **kwargs: Any) -> Any:
            inferring.add(threading.current_thread().name)
            return analyze(*args, **kwargs)

        monkeypatch.setattr(gpu_engine, "analyze_batch", recorded)
        job = ws.job(root, workers=2, infer_batch=2)
        assert job.infer_workers == 1 + GPU_EXTRA_INFER_WORKERS
        assert job.run() is RunOutcome.COMPLETED
        assert len(inferring) >= 2, inferring
        counts = job.progress().counts
        assert (counts.ingested, counts.faces_added) == (8, 8)
        assert ws.ids() == expected and ws.thumbs() == expected and not ws.state_ahead_of_store()


def test_changed_file_is_reingested_and_its_old_faces_replaced(tmp_path: Path, ingest_engine: FaceEngine) -> None:
    root = tmp_path / "photos"
    files = face_folder(root, 4, nested=False)
    with workspace(tmp_path / "state", ingest_engine) as ws:
        ws.job(root).run()
        changed, touched = files[0], files[1]
        old_ids = set(ws.store.ids_for_file(str(changed)))
        assert len(old_ids) == 1

        shutil.copyfile(FIVE_FACES, changed)  # new content under the same name
        stat = touched.stat()
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # new mtime, same bytes

        job = ws.job(root)
        job.run()
        counts = job.progress().counts
        assert (counts.ingested, counts.skipped, counts.faces_added) == (1, 3, 5)
        new_ids = set(ws.store.ids_for_file(str(changed)))
        assert len(new_ids) == 5 and not new_ids & old_ids
        assert not old_ids & ws.ids() and not old_ids & ws.thumbs()
        assert ws.store.count() == 3 + 5
        record = ws.state.lookup(job.collection, str(touched))
        assert record is not None and record.mtime_ns == touched.stat().st_mtime_ns  # refreshed, not redone

        shutil.copyfile(NO_FACE, changed)  # now without any face: its faces go
        ws.job(root).run()
        assert ws.store.ids_for_file(str(changed)) == []
        record = ws.state.lookup(job.collection, str(changed))
        assert record is not None and record.status is FileStatus.NO_FACE


def test_no_resume_reprocesses_everything_idempotently(tmp_path: Path, ingest_engine: FaceEngine) -> None:
    root = tmp_path / "photos"
    face_folder(root, 5)
    with workspace(tmp_path / "state", ingest_engine) as ws:
        ws.job(root).run()
        ids = ws.ids()
        again = ws.job(root, resume=False)
        again.run()
        counts = again.progress().counts
        assert (counts.skipped, counts.ingested) == (0, 5)
        assert ws.ids() == ids and ws.store.count() == 5
        assert ws.thumbs() == ids


def test_store_down_stops_the_run_cleanly_and_resume_completes(
    tmp_path: Path, any_engine: FaceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "photos"
    face_folder(root, 6)
    with workspace(tmp_path / "clean", any_engine) as ws:
        ws.job(root).run()
        clean_ids = ws.ids()

    with workspace(tmp_path / "state", any_engine) as ws:

        def store_goes_down(job: IngestJob) -> None:
            if job.progress().counts.done >= 2:
                ws.store.close()

        # every write attempt the store refused, by the points it carried (one commit: the same points each time)
        refused: Counter[tuple[str, ...]] = Counter()
        write_points = ws.service.write_points

        def counting_write_points(points: Any, results: Any) -> None:
            try:
                write_points(points, results)
            except StoreUnavailable:
                refused[tuple(p.id for p in points)] += 1
                raise

        monkeypatch.setattr(ws.service, "write_points", counting_write_points)
        retry = RetryPolicy(attempts=3, max_delay=600.0, wait_initial=0.01, wait_max=0.05)  # attempts bind
        job = ws.job(root, batch=1, workers=2, infer_batch=1, on_commit=store_goes_down, retry=retry)
        with pytest.raises(StoreUnavailable, match="run the same ingest again to resume"):
            job.run()
        # bounded retries: each commit that met the closed store was tried exactly `attempts` times (one
        # commit per inference worker at most: the first failure ends the run)
        assert 1 <= len(refused) <= job.infer_workers
        assert set(refused.values()) == {retry.attempts}
        done = job.progress().counts.done
        assert done >= 2 and len(ws.state.files()) == done  # the files done before are recorded, no more

        ws.state.close()
        ws.open()  # the store is back
        assert ws.store.count() == done
        resumed = ws.job(root)
        assert resumed.run() is RunOutcome.COMPLETED
        assert resumed.progress().counts.skipped == done
        assert ws.ids() == clean_ids


def test_dry_run_counts_without_writing(tmp_path: Path, ingest_engine: FaceEngine) -> None:
    root = tmp_path / "photos"
    face_folder(root, 3)
    with workspace(tmp_path / "state", ingest_engine) as ws:
        job = ws.job(root, dry_run=True)
        job.run()
        assert (job.progress().counts.seen, job.progress().counts.ingested) == (3, 3)
        assert ws.store.count() == 0 and ws.state.files() == []
        ws.job(root).run()
        dry = ws.job(root, dry_run=True)
        dry.run()
        assert dry.progress().counts.skipped == 3


def test_state_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    state = IngestState(tmp_path / STATE_FILE)
    try:
        mode = state._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        state.close()


# ------------------------------------------------------------------------------------------------- jobs API


def wait_for(
    client: TestClient, job_id: str, statuses: set[str], timeout: float = 120.0, seen: list[str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/jobs/{job_id}").json()
        if seen is not None and (not seen or seen[-1] != body["status"]):
            seen.append(body["status"])
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, f"job {job_id} stuck in {body['status']}"
        time.sleep(0.02)


def test_jobs_api_status_transitions_and_queue(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    face_folder(first, 6)
    face_folder(second, 2, start=6)
    with TestClient(
        create_app(make_settings(tmp_path / "state", ingest_roots=str(tmp_path))), client=LOOPBACK
    ) as client:
        a = client.post("/api/ingest", json={"path": str(first), "batch": 1})
        b = client.post("/api/ingest", json={"path": str(second)})
        assert a.status_code == b.status_code == 202
        a_id, b_id = a.json()["id"], b.json()["id"]
        assert b.json()["status"] == "pending"  # one job at a time: the second waits for the first
        assert client.post("/api/ingest", json={"path": str(second)}).json()["id"] == b_id  # same work: same job

        a_seen = [a.json()["status"]]
        b_seen = [b.json()["status"]]
        body = wait_for(client, a_id, FINISHED, seen=a_seen)
        assert body["status"] == "completed"
        assert a_seen[-2:] == ["processing", "completed"] and set(a_seen) <= {"pending", "processing", "completed"}
        c = body["counts"]
        assert (c["total"], c["seen"], c["ingested"], c["faces_added"], c["failed"]) == (6, 6, 6, 6, 0)
        assert body["started_at"] >= body["created_at"] and body["finished_at"] >= body["started_at"]
        assert body["eta_s"] is None and body["files_per_s"] > 0 and body["faces_per_s"] > 0

        body = wait_for(client, b_id, FINISHED, seen=b_seen)
        assert body["status"] == "completed" and b_seen[0] == "pending"
        jobs = client.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in jobs] == [b_id, a_id]  # most recent first
        assert client.get("/status").json()["vectors"] == 8


def test_jobs_of_two_kinds_share_the_one_queue(tmp_path: Path) -> None:
    """An ingest job and a cluster job (JobKind): one at a time, in order, both in /api/jobs with their kind. The
    cluster job queued behind the ingest clusters the faces that ingest added (mirrored copies of two people's
    photos: two clusters)."""
    root = tmp_path / "photos"
    face_folder(root, 8)  # Yao Ming and Tom Hanks, four variants each
    with TestClient(
        create_app(make_settings(tmp_path / "state", ingest_roots=str(tmp_path))), client=LOOPBACK
    ) as client:
        ingest = client.post("/api/ingest", json={"path": str(root), "batch": 1}).json()
        cluster = client.post("/api/clusters")
        assert cluster.status_code == 202 and cluster.json()["kind"] == "cluster"
        assert client.post("/api/clusters").json()["id"] == cluster.json()["id"]  # the pending one, not another
        cluster_seen = [cluster.json()["status"]]
        assert wait_for(client, ingest["id"], FINISHED)["status"] == "completed"
        body = wait_for(client, cluster.json()["id"], FINISHED, seen=cluster_seen)
        assert body["status"] == "completed" and cluster_seen[0] == "pending"
        assert body["detail"]["clustered"] == 8 and body["detail"]["new_clusters"] == 2
        assert body["path"] == "" and body["counts"]["seen"] == 0  # no files: its counts are in `detail`
        jobs = client.get("/api/jobs").json()["jobs"]
        assert [(j["id"], j["kind"]) for j in jobs] == [(cluster.json()["id"], "cluster"), (ingest["id"], "ingest")]
        assert client.get("/api/clusters").json()["total"] == 2


def held_until_stopped(monkeypatch: pytest.MonkeyPatch, after_images: int) -> None:
    """The engine holds the job's calls after `after_images` images until the job is told to stop (cancel or
    shutdown): the stop comes mid-job on a fast machine too."""
    stopped = threading.Event()
    stop = IngestJob.stop

    def stop_and_release(self: IngestJob) -> None:
        stop(self)
        stopped.set()

    monkeypatch.setattr(IngestJob, "stop", stop_and_release)
    monkeypatch.setattr(
        FaceEngine, "analyze_batch", held_engine_calls(FaceEngine.analyze_batch, after_images, stopped.is_set)
    )


def test_jobs_api_cancel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, other = tmp_path / "photos", tmp_path / "other"
    face_folder(root, 30)
    held_until_stopped(monkeypatch, 1)
    face_folder(other, 1, start=30)
    with TestClient(
        create_app(make_settings(tmp_path / "state", ingest_roots=str(tmp_path))), client=LOOPBACK
    ) as client:
        job_id = client.post("/api/ingest", json={"path": str(root), "batch": 1, "workers": 2}).json()["id"]
        queued = client.post("/api/ingest", json={"path": str(other)}).json()["id"]
        cancelled = client.delete(f"/api/jobs/{queued}").json()
        assert cancelled["status"] == "cancelled" and "before it started" in cancelled["message"]

        wait_until(lambda: client.get(f"/api/jobs/{job_id}").json()["counts"]["done"] >= 1, what="a file done")
        body = client.delete(f"/api/jobs/{job_id}").json()
        assert body["status"] == "cancelled"
        done = body["counts"]["done"]
        # At most the calls let through before the hold and one held call per inference worker.
        assert 1 <= done < 1 + 3 * INFER_BATCH_SHARED_CPU < 30
        assert client.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"
        assert client.delete(f"/api/jobs/{job_id}").json()["status"] == "cancelled"  # idempotent
        assert client.get("/status").json()["vectors"] == done  # the files done before the cancel are kept
        assert client.get(f"/api/jobs/{queued}").json()["counts"]["seen"] == 0


def test_jobs_api_refuses_bad_requests(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a photo")
    with TestClient(
        create_app(make_settings(tmp_path / "state", ingest_roots=str(tmp_path))), client=LOOPBACK
    ) as client:
        relative = client.post("/api/ingest", json={"path": "photos"})  # relative to the root: not there
        assert relative.status_code == 400 and "does not exist" in relative.json()["detail"]
        missing = client.post("/api/ingest", json={"path": str(tmp_path / "nope")})
        assert missing.status_code == 400 and "does not exist" in missing.json()["detail"]
        text = client.post("/api/ingest", json={"path": str(tmp_path / "notes.txt")})
        assert text.status_code == 400 and "not an image file" in text.json()["detail"]
        assert client.post("/api/ingest", json={"path": str(tmp_path), "batch": 0}).status_code == 422
        assert client.get("/api/jobs/0123abcd").status_code == 404
        assert client.delete("/api/jobs/0123abcd").status_code == 404


def test_ingest_over_http_is_off_without_ingest_roots(tmp_path: Path) -> None:
    face_folder(tmp_path / "photos", 1)
    with TestClient(create_app(make_settings(tmp_path / "state")), client=LOOPBACK) as client:
        r = client.post("/api/ingest", json={"path": str(tmp_path / "photos")})
        assert r.status_code == 403 and "INGEST_ROOTS" in r.json()["detail"]
        assert client.get("/api/jobs").json()["jobs"] == []


def test_ingest_roots_restrict_what_the_service_reads(tmp_path: Path) -> None:
    allowed, other = tmp_path / "photos", tmp_path / "private"
    face_folder(allowed / "2024", 1, nested=False)
    face_folder(other, 1, nested=False, start=1)
    (allowed / "door").symlink_to(other, target_is_directory=True)
    settings = make_settings(tmp_path / "state").model_copy(update={"ingest_roots": str(allowed)})
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        for path in (
            str(other),
            str(allowed / ".." / "private"),
            str(allowed / "door"),
            "../private",
            str(tmp_path / "nowhere"),
        ):  # nothing is said about a path outside: not even that it is missing
            r = client.post("/api/ingest", json={"path": path})
            assert r.status_code == 403 and "INGEST_ROOTS" in r.json()["detail"], (path, r.text)
        one = client.post("/api/ingest", json={"path": str(allowed / "2024" / "photo000.jpg")})
        assert one.status_code == 202 and one.json()["path"] == "2024/photo000.jpg"  # relative to its root
        whole = client.post("/api/ingest", json={"path": "2024"})  # a relative path: under a root
        assert whole.status_code == 202 and whole.json()["path"] == "2024"
        wait_for(client, whole.json()["id"], FINISHED)
        assert {j["path"] for j in client.get("/api/jobs").json()["jobs"]} == {"2024", "2024/photo000.jpg"}


def test_followed_links_stay_inside_ingest_roots(tmp_path: Path) -> None:
    """--follow-symlinks in a job of the service: a link leading out of INGEST_ROOTS is skipped, one inside is
    followed; the CLI's local run (no roots) follows both."""
    allowed, other = tmp_path / "photos", tmp_path / "private"
    face_folder(allowed / "mine", 2, nested=False)
    face_folder(other, 3, nested=False, start=2)
    (allowed / "escape").symlink_to(other, target_is_directory=True)
    (allowed / "escape.jpg").symlink_to(other / "photo002.jpg")
    (allowed / "alias").symlink_to(allowed / "mine", target_is_directory=True)
    walked = sorted(
        p.relative_to(allowed).as_posix() for p in iter_image_files(allowed, follow_symlinks=True, within=(allowed,))
    )
    assert walked == ["mine/photo000.jpg", "mine/photo001.jpg"]  # "alias" is the same folder: visited once
    assert len(list(iter_image_files(allowed, follow_symlinks=True))) == 6  # no roots: the links are followed
    settings = make_settings(tmp_path / "state", ingest_roots=str(allowed))
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        job = client.post("/api/ingest", json={"path": str(allowed), "follow_symlinks": True}).json()
        body = wait_for(client, job["id"], FINISHED)
        assert body["status"] == "completed" and body["path"] == "."
        assert (body["counts"]["seen"], body["counts"]["ingested"]) == (2, 2)
        assert client.get("/status").json()["vectors"] == 2


def test_unfinished_job_resumes_when_the_service_starts_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    face_folder(root, 40)
    held_until_stopped(monkeypatch, 2)
    settings = make_settings(tmp_path / "state", ingest_roots=str(tmp_path))
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        job_id = client.post("/api/ingest", json={"path": str(root), "batch": 1, "workers": 2, "resume": False}).json()[
            "id"
        ]
        wait_until(lambda: client.get(f"/api/jobs/{job_id}").json()["counts"]["done"] >= 2, what="two files done")
    monkeypatch.undo()  # the next start runs freely
    # the service stopped mid-job: the job waits for the next start
    state = IngestState(settings.state_dir / STATE_FILE)
    view = state.job(job_id)
    done_before = len(state.files())
    state.close()
    assert view is not None and view.status is JobStatus.PENDING and "resumes" in (view.message or "")
    assert 2 <= done_before < 2 + 3 * INFER_BATCH_SHARED_CPU < 40

    with TestClient(create_app(settings), client=LOOPBACK) as client:
        body = wait_for(client, job_id, FINISHED)
        assert body["status"] == "completed" and body["attempts"] == 2
        # --no-resume jobs do not start over after a restart: this job's own files count as done
        assert body["counts"]["skipped"] == done_before
        assert client.get("/status").json()["vectors"] == 40  # one face per photo, none twice


def test_an_unusable_ingest_path_is_a_400_not_a_500(tmp_path: Path) -> None:
    """A 4000-character name (found by Schemathesis): the filesystem refuses it, the answer says so."""
    root = tmp_path / "photos"
    root.mkdir()
    with TestClient(create_app(make_settings(tmp_path / "state", ingest_roots=str(root))), client=LOOPBACK) as client:
        r = client.post("/api/ingest", json={"path": "0" * 4000})
        assert r.status_code == 400 and "cannot use that path" in r.json()["detail"], r.text


# ------------------------------------------------------------------------------------------------- hostile files


def test_a_photo_swapped_for_a_fifo_after_the_walk_is_failed_and_the_job_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "photos"
    victim, *_ = sorted(face_folder(root, 3, nested=False))
    listed = IngestJob._check

    def listed_then_swapped(job: IngestJob, path: Path) -> Any:
        found = listed(job, path)  # the walk saw a regular file...
        if path == victim:
            victim.unlink()
            os.mkfifo(victim)  # ...which is a FIFO nobody writes to by the time it is read
        return found

    monkeypatch.setattr(IngestJob, "_check", listed_then_swapped)
    with TestClient(create_app(make_settings(tmp_path / "state", ingest_roots=str(root))), client=LOOPBACK) as client:
        try:
            job = wait_for(client, client.post("/api/ingest", json={"path": str(root)}).json()["id"], FINISHED, 60)
        finally:  # a reader stuck in open() (the bug) is released, so that the service can stop
            if victim.is_fifo():
                os.close(os.open(victim, os.O_RDWR | os.O_NONBLOCK))
        assert job["status"] == "completed", job
        assert (job["counts"]["ingested"], job["counts"]["failed"]) == (2, 1)
        (error,) = job["last_errors"]
        assert error["path"] == victim.name and "not a regular file (a FIFO)" in error["reason"], error


class HungMount:
    """A stand-in for a file on a dead network mount (no real one can be made here): reading `path` blocks until
    `release`; other files are read for real."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.released = threading.Event()
        self.read = read.read_image_bytes

    def __call__(self, path: Path, **limits: Any) -> bytes:
        if path == self.path:
            self.released.wait()
        return self.read(path, **limits)


def test_a_read_that_hangs_is_failed_at_ingest_file_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    victim, *_ = sorted(face_folder(root, 3, nested=False))
    hung = HungMount(victim)
    monkeypatch.setattr(read, "read_image_bytes", hung)
    settings = make_settings(tmp_path / "state", ingest_roots=str(root), ingest_file_timeout=1.0)
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        try:
            job = wait_for(client, client.post("/api/ingest", json={"path": str(root)}).json()["id"], FINISHED, 60)
        finally:
            hung.released.set()
        assert job["status"] == "completed", job
        assert (job["counts"]["ingested"], job["counts"]["failed"]) == (2, 1)
        (error,) = job["last_errors"]
        assert error["path"] == victim.name and "INGEST_FILE_TIMEOUT" in error["reason"], error


def test_cancelling_a_job_stuck_on_a_read_ends_it_and_the_next_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, other = tmp_path / "photos", tmp_path / "other"
    victim, *_ = sorted(face_folder(root, 3, nested=False))
    face_folder(other, 2, start=3)
    hung = HungMount(victim)
    monkeypatch.setattr(read, "read_image_bytes", hung)
    with TestClient(create_app(make_settings(tmp_path / "state", ingest_roots=str(tmp_path))), client=LOOPBACK) as c:
        try:
            stuck = c.post("/api/ingest", json={"path": str(root), "workers": 1}).json()["id"]
            following = c.post("/api/ingest", json={"path": str(other)}).json()["id"]
            wait_for(c, stuck, {"processing"})
            cancelled = c.delete(f"/api/jobs/{stuck}").json()  # the API waits for the job to end (10 s at most)
            assert cancelled["status"] == "cancelled", cancelled
            assert wait_for(c, following, FINISHED, 60)["status"] == "completed"
        finally:
            hung.released.set()


def test_a_nul_in_an_ingest_path_is_a_4xx_naming_it(tmp_path: Path) -> None:
    """The request schema refuses it (422, like any invalid field); JobManager.submit refuses it too (400) for
    callers that do not come through HTTP."""
    root = tmp_path / "photos"
    root.mkdir()
    with TestClient(create_app(make_settings(tmp_path / "state", ingest_roots=str(root))), client=LOOPBACK) as client:
        r = client.post("/api/ingest", json={"path": f"{root}/a\x00b.jpg"})
        assert r.status_code == 422 and "NUL" in r.text, r.text
