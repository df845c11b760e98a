"""app.ingest.state: resume records and jobs are kept per collection and model pack, and older state files are
migrated in place; with the real models and Qdrant Edge."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.engine import FaceEngine, resolve_pack
from app.errors import IncompatibleState
from app.ingest.manager import JobManager
from app.ingest.model import STATE_FILE, FileStatus, IngestOptions, JobKind, JobStatus, RunOutcome
from app.ingest.pipeline import IngestJob
from app.ingest.state import LEGACY_KEY, SCHEMA_VERSION, IngestState, collection_key
from tests.support import Workspace, face_folder, make_settings, workspace

# The schema of Oceano's first state files (user_version 1), as it created them.
SCHEMA_1 = """
    CREATE TABLE files (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        content_hash TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        faces INTEGER NOT NULL DEFAULT 0,
        run_id TEXT,
        updated_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        options TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        progress TEXT NOT NULL DEFAULT '{}',
        message TEXT,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_status ON jobs(status, created_at);
    PRAGMA user_version=1;
"""


@contextmanager
def workspace_for(state: Path, engine: FaceEngine, **overrides: object) -> Iterator[Workspace]:
    """A workspace on `state` with other settings (e.g. another COLLECTION_NAME under the same STATE_DIR)."""
    ws = Workspace(make_settings(state, **overrides), engine)
    try:
        yield ws
    finally:
        ws.close()


def write_schema_1(db_path: Path, files: list[Path]) -> None:
    """A version-1 state file as the first Oceano left it: `files` recorded done, one job left pending."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(db_path))
    try:
        db.executescript(SCHEMA_1)
        with db:
            db.executemany(
                "INSERT INTO files (path, size, mtime_ns, content_hash, status, faces, run_id, updated_at) "
                "VALUES (?, ?, ?, ?, 'done', 1, 'old-run', ?)",
                [(str(f), f.stat().st_size, f.stat().st_mtime_ns, "0" * 64, time.time()) for f in files],
            )
            db.execute(
                "INSERT INTO jobs (id, path, options, status, created_at) VALUES ('oldjob', ?, '{}', 'pending', ?)",
                (str(files[0].parent), time.time()),
            )
    finally:
        db.close()


def test_another_collection_ingests_every_file_again(tmp_path: Path, ingest_engine: FaceEngine) -> None:
    """Issue Trust, item 4: COLLECTION_NAME changed, same STATE_DIR: the new collection gets every face."""
    root = tmp_path / "photos"
    face_folder(root, 5)
    with workspace(tmp_path / "state", ingest_engine) as ws:
        assert ws.job(root).run() is RunOutcome.COMPLETED
        ids = ws.ids()
        assert len(ids) == 5

    with workspace_for(tmp_path / "state", ingest_engine, collection_name="faces_v2") as ws:
        assert ws.store.count() == 0
        job = ws.job(root)
        assert job.run() is RunOutcome.COMPLETED
        counts = job.progress().counts
        assert (counts.skipped, counts.ingested, counts.faces_added) == (0, 5, 5)
        assert ws.ids() == ids  # the same faces (ids follow the content), now in faces_v2
        # each collection keeps its own records: running again into either skips every file
        assert len(ws.state.files(job.collection)) == 5 and len(ws.state.files()) == 10
        again = ws.job(root)
        again.run()
        assert again.progress().counts.skipped == 5

    with workspace(tmp_path / "state", ingest_engine) as ws:
        again = ws.job(root)
        again.run()
        assert (again.progress().counts.skipped, again.progress().counts.ingested) == (5, 0)
        assert ws.ids() == ids


def test_resumed_run_into_the_same_collection_skips_done_files(tmp_path: Path, ingest_engine: FaceEngine) -> None:
    root = tmp_path / "photos"
    face_folder(root, 6)
    with workspace(tmp_path / "state", ingest_engine) as ws:

        def stop_after_two(job: IngestJob) -> None:
            if job.progress().counts.done >= 2:
                job.stop()

        first = ws.job(root, batch=1, workers=2, infer_batch=1, on_commit=stop_after_two)
        assert first.run() is RunOutcome.STOPPED
        done = first.progress().counts.done
        assert 2 <= done < 6 and len(ws.state.files(first.collection)) == done

    with workspace(tmp_path / "state", ingest_engine) as ws:  # the same settings: the same collection key
        resumed = ws.job(root)
        assert resumed.collection == first.collection
        assert resumed.run() is RunOutcome.COMPLETED
        counts = resumed.progress().counts
        assert (counts.skipped, counts.ingested) == (done, 6 - done)
        assert ws.store.count() == 6


def test_collection_key_names_backend_collection_and_pack(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    fingerprint = resolve_pack(settings).fingerprint
    key = collection_key(settings, fingerprint)
    assert key.startswith("edge:") and "|faces|" in key and key.endswith(fingerprint)
    others = {
        collection_key(settings.model_copy(update={"collection_name": "faces_v2"}), fingerprint),
        collection_key(settings, "antelopev2:glintr100.onnx:0123456789abcdef"),
        collection_key(settings.model_copy(update={"qdrant_path": tmp_path / "elsewhere"}), fingerprint),
        collection_key(settings.model_copy(update={"qdrant_url": "http://qdrant:6333"}), fingerprint),
    }
    assert key not in others and len(others) == 4 and LEGACY_KEY not in others | {key}
    server = collection_key(settings.model_copy(update={"qdrant_url": "https://user:secret@Qdrant:6333/"}), "p")
    assert server == "server:https://qdrant:6333|faces|p"  # no credentials in the state file


def test_version_1_state_is_migrated_and_its_files_read_once_more(tmp_path: Path, ingest_engine: FaceEngine) -> None:
    root = tmp_path / "photos"
    files = face_folder(root, 4, nested=False)
    state_dir = tmp_path / "state"
    write_schema_1(state_dir / STATE_FILE, files)

    with workspace(state_dir, ingest_engine) as ws:
        db = ws.state._db
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"files", "jobs"}
        kept = ws.state.files(LEGACY_KEY)  # rows kept, under a key no run has
        assert sorted(r.path for r in kept) == sorted(str(f) for f in files)
        assert {r.status for r in kept} == {FileStatus.DONE}
        legacy_job = ws.state.job("oldjob")
        assert legacy_job is not None and legacy_job.collection == LEGACY_KEY and legacy_job.kind is JobKind.INGEST

        job = ws.job(root)
        assert job.run() is RunOutcome.COMPLETED
        counts = job.progress().counts
        assert (counts.skipped, counts.ingested, counts.failed) == (0, 4, 0)  # read once more
        assert ws.store.count() == 4
        assert len(ws.state.files(job.collection)) == 4 and len(ws.state.files(LEGACY_KEY)) == 4

        again = ws.job(root)
        again.run()
        assert again.progress().counts.skipped == 4  # once only

    reopened = IngestState(state_dir / STATE_FILE)  # already at version 3: opened as it is
    try:
        assert len(reopened.files()) == 8
    finally:
        reopened.close()


def test_version_2_state_gets_job_kinds(tmp_path: Path) -> None:
    """Schema 3 records each job's kind (ingest | cluster): a version 2 file's jobs were all ingest jobs."""
    path = tmp_path / STATE_FILE
    db = sqlite3.connect(str(path))
    db.executescript(
        f"""
        CREATE TABLE files (collection TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, content_hash TEXT, status TEXT NOT NULL, reason TEXT,
            faces INTEGER NOT NULL DEFAULT 0, run_id TEXT, updated_at REAL NOT NULL, PRIMARY KEY (collection, path));
        CREATE TABLE jobs (id TEXT PRIMARY KEY, path TEXT NOT NULL, options TEXT NOT NULL, status TEXT NOT NULL,
            created_at REAL NOT NULL, started_at REAL, finished_at REAL, progress TEXT NOT NULL DEFAULT '{{}}',
            message TEXT, attempts INTEGER NOT NULL DEFAULT 0, collection TEXT NOT NULL DEFAULT '{LEGACY_KEY}');
        INSERT INTO jobs (id, path, options, status, created_at, collection)
            VALUES ('v2job', '/photos', '{{}}', 'pending', 1.0, 'edge:/q|faces|p');
        PRAGMA user_version=2;
        """
    )
    db.close()
    state = IngestState(path)
    try:
        job = state.job("v2job")
        assert job is not None and job.kind is JobKind.INGEST and job.collection == "edge:/q|faces|p"
        state.create_job("c1", "", IngestOptions(), collection="edge:/q|faces|p", kind=JobKind.CLUSTER)
        assert [j.id for j in state.jobs(kind=JobKind.CLUSTER)] == ["c1"]
        assert [j.id for j in state.jobs(kind=JobKind.INGEST)] == ["v2job"]
        assert state._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        state.close()


def test_failed_migration_leaves_the_version_1_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = face_folder(tmp_path / "photos", 2, nested=False)
    path = tmp_path / STATE_FILE
    write_schema_1(path, files)

    def crash(self: IngestState) -> None:
        self._db.execute("ALTER TABLE files RENAME TO files_v1")  # half-way through
        raise RuntimeError("killed")

    monkeypatch.setattr(IngestState, "_create_or_migrate", crash)
    with pytest.raises(RuntimeError, match="killed"):
        IngestState(path)
    db = sqlite3.connect(str(path))
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 2
    finally:
        db.close()
    monkeypatch.undo()
    state = IngestState(path)
    try:
        assert len(state.files(LEGACY_KEY)) == 2
    finally:
        state.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(IncompatibleState, match="newer Oceano"):
        IngestState(path)
    db = sqlite3.connect(str(path))
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99  # left untouched
    finally:
        db.close()


def wait_finished(manager: JobManager, job_id: str) -> JobStatus:
    deadline = time.monotonic() + 60
    while not (status := manager.get(job_id).status).finished:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return status


def test_jobs_resume_only_under_their_own_collection(
    tmp_path: Path, ingest_engine: FaceEngine, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "photos"
    face_folder(root, 3)
    state_dir = tmp_path / "state"
    v2 = collection_key(make_settings(state_dir, collection_name="faces_v2"), ingest_engine.fingerprint)
    v3 = collection_key(make_settings(state_dir, collection_name="faces_v3"), ingest_engine.fingerprint)

    roots = str(tmp_path)  # the service's jobs read only inside INGEST_ROOTS
    with workspace_for(state_dir, ingest_engine, ingest_roots=roots) as ws:  # jobs faces_v2 / v3 left unfinished
        ws.state.create_job("v2job", str(root), IngestOptions(), collection=v2)
        ws.state.create_job("v3job", str(root), IngestOptions(), collection=v3)
        manager = JobManager(service=ws.service, state=ws.state, settings=ws.settings)
        with caplog.at_level("INFO", logger="app.ingest.manager"):
            manager.start()
        try:
            assert "v2job" in caplog.text and "another collection" in caplog.text
            own = manager.submit(str(root), IngestOptions())  # the same path and options: a job of its own
            assert own.id not in ("v2job", "v3job")
            assert wait_finished(manager, own.id) is JobStatus.COMPLETED and ws.store.count() == 3
            for other in ("v2job", "v3job"):  # left as they were
                view = ws.state.job(other)
                assert view is not None and view.status is JobStatus.PENDING and view.attempts == 0
            assert manager.cancel("v3job").status is JobStatus.CANCELLED  # it cannot run here: cancelled at once
        finally:
            manager.shutdown()

    with workspace_for(state_dir, ingest_engine, collection_name="faces_v2", ingest_roots=roots) as ws:
        manager = JobManager(service=ws.service, state=ws.state, settings=ws.settings)
        manager.start()
        try:
            assert wait_finished(manager, "v2job") is JobStatus.COMPLETED  # resumed by its own collection
            assert manager.get("v2job").progress.counts.ingested == 3 and ws.store.count() == 3
        finally:
            manager.shutdown()
