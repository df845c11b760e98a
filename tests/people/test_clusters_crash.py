"""A kill -9 during a clustering job, through a real service process (`python -m app`): at the next start the job
manager resumes the job from its cursor (it does not start over), the memberships journalled before the kill are
written, every face ends in one cluster of its own identity, and the clusters made before the kill keep their ids."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from app.bootstrap import open_services
from app.engine import FaceEngine
from app.heads import HeadRegistry
from app.ingest.model import JobKind, JobStatus
from app.people import PEOPLE_FILE
from app.people.clusters import CLUSTER_KEY
from app.store import EdgeStore, FaceFilter, FacePoint, point_id, spec_from_settings
from tests.support import REPO, free_port, make_settings, wait_until

IDENTITIES, PER_IDENTITY = 150, 16


def fill(path: Path, dim: int, pack: str, state: Path) -> dict[str, int]:
    """Unknown faces around identity centres, written before the service opens the collection."""
    store = EdgeStore(path, spec_from_settings(make_settings(state), dim=dim, pack=pack), background_index=False)
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((IDENTITIES, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    identity: dict[str, int] = {}
    points = []
    for i in range(IDENTITIES * PER_IDENTITY):
        c = i % IDENTITIES
        noise = rng.standard_normal(dim).astype(np.float32)
        vector = 0.75 * centres[c] + np.sqrt(1 - 0.75**2) * noise / np.linalg.norm(noise)
        face = point_id("crash", i)
        identity[face] = c
        points.append(FacePoint(face, vector / np.linalg.norm(vector), {"file": f"{i}.jpg", "face_index": 0}))
    store.upsert(points)
    store.close()
    return identity


def journalled(state: Path) -> dict[str, str]:
    if not (state / PEOPLE_FILE).exists():
        return {}
    db = sqlite3.connect(f"file:{state / PEOPLE_FILE}?mode=ro", uri=True, timeout=5)
    try:
        return dict(db.execute("SELECT face_id, cluster FROM cluster_faces").fetchall())
    except sqlite3.OperationalError:  # the table is not there yet
        return {}
    finally:
        db.close()


def cursor(state: Path) -> dict[str, object] | None:
    db = sqlite3.connect(f"file:{state / PEOPLE_FILE}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT pass, offset, counts FROM cluster_cursor").fetchone()
    finally:
        db.close()
    return None if row is None else {"pass": row[0], "offset": row[1], "counts": json.loads(row[2])}


def test_kill_during_clustering_resumes_and_loses_nothing(tmp_path: Path, engine: FaceEngine) -> None:
    state = tmp_path / "state"
    settings = make_settings(state, index_threshold=10**6)  # no index build: the clustering is what is watched
    identity = fill(settings.qdrant_path / settings.collection_name, engine.dim, engine.fingerprint, state)
    port = free_port()
    env = {
        **os.environ,
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(settings.qdrant_path),
        "THUMBS_DIR": str(settings.thumbs_dir),
        "INDEX_THRESHOLD": str(10**6),
        "LOG_LEVEL": "warning",
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, seconds=180, what="the service start")
        job = httpx.post(f"{url}/api/clusters", timeout=30).json()
        assert job["kind"] == "cluster"
        wait_until(lambda: cursor(state) is not None, seconds=120, what="clustering under way (its first write)")
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
        log.close()

    before = journalled(state)
    assert 0 < len(before) < len(identity), "the kill was meant to land in the middle of the run"
    saved = cursor(state)
    assert saved is not None  # progress was recorded durably

    services = open_services(settings, models=(engine, HeadRegistry()), batcher=False, keys=False)
    try:
        jobs, people = services.jobs, services.people
        assert jobs is not None and people is not None and people.clusters is not None
        wait_until(lambda: jobs.get(job["id"]).status.finished, seconds=240, what="the resumed clustering job")
        resumed = jobs.get(job["id"])
        assert resumed.status is JobStatus.COMPLETED and resumed.kind is JobKind.CLUSTER and resumed.attempts == 2
        # Resumed, not restarted: its counts carry on from those saved before the kill, and what was clustered
        # then is not clustered again (each face counted at most once).
        carried: dict[str, int] = saved["counts"]  # type: ignore[assignment]
        assert carried["clustered"] > 0
        assert resumed.progress.detail["faces_seen"] >= carried["faces_seen"]
        assert resumed.progress.detail["clustered"] <= len(identity)
        members: dict[str, str] = {}
        offset = None
        while True:
            faces, offset = services.store.scroll(FaceFilter(), offset=offset, limit=1000, keys=[CLUSTER_KEY])
            members.update({f.id: f.payload[CLUSTER_KEY] for f in faces if f.payload.get(CLUSTER_KEY)})
            if offset is None:
                break
        assert set(members) == set(identity)  # nothing lost
        assert journalled(state) == members  # the journal and the payloads agree, each face once
        assert {f: members[f] for f in before} == before  # clusters made before the kill kept their ids
        by_cluster: dict[str, set[int]] = {}
        for face, cluster in members.items():
            by_cluster.setdefault(cluster, set()).add(identity[face])
        assert all(len(ids) == 1 for ids in by_cluster.values())  # no cluster mixes two people
        assert people.clusters.state.pending_members() == [] and people.clusters.state.cursor(job["id"]) is None
        sizes = sorted(r.size for r in people.clusters.iter_records())
        assert sum(sizes) == len(identity)
    finally:
        services.close()
