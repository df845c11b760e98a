"""A kill -9 during a merge of many faces, through a real service process (`python -m app`): after the restart,
once start-up has finished the journal, every face has the new name (never a mix), and nothing is lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from app.bootstrap import open_services
from app.engine import FaceEngine
from app.heads import HeadRegistry
from app.people import PEOPLE_FILE
from app.store import EdgeStore, FaceFilter, FacePoint, point_id, spec_from_settings
from tests.support import REPO, free_port, make_settings

KEPT, MOVED = 500, 12000  # faces of the subject merged into, faces of the subject merged


def fill(path: Path, dim: int, pack: str, state: Path) -> None:
    """The collection written directly (synthetic vectors; no model needed for names), before the service opens it."""
    settings = make_settings(state)
    store = EdgeStore(path, spec_from_settings(settings, dim=dim, pack=pack), background_index=False)
    rng = np.random.default_rng(1)
    for subject, n in (("Alice", KEPT), ("Bob", MOVED)):
        for start in range(0, n, 2000):
            points = [
                FacePoint(
                    point_id(subject, i),
                    rng.standard_normal(dim).astype(np.float32),
                    {"subject": subject, "file": f"{subject}{i}.jpg", "face_index": 0, "origin": "upload"},
                )
                for i in range(start, min(n, start + 2000))
            ]
            store.upsert(points)
    store.close()


def moves(state: Path) -> list[tuple[int, int]]:
    if not (state / PEOPLE_FILE).exists():
        return []
    db = sqlite3.connect(f"file:{state / PEOPLE_FILE}?mode=ro", uri=True, timeout=5)
    try:
        return [(int(m), int(d)) for m, d in db.execute("SELECT moved, done FROM moves")]
    except sqlite3.OperationalError:  # the table is not there yet
        return []
    finally:
        db.close()


def count(store: EdgeStore, subject: str) -> int:
    total, offset = 0, None
    while True:
        page, offset = store.scroll(FaceFilter(subject=subject), offset=offset, limit=1000, keys=("subject",))
        total += len(page)
        if offset is None:
            return total


def test_kill_during_a_merge_leaves_the_new_state_after_restart(tmp_path: Path, engine: FaceEngine) -> None:
    state = tmp_path / "state"
    settings = make_settings(state, index_threshold=10**6)  # no index build: the merge is what the test watches
    fill(settings.qdrant_path / settings.collection_name, engine.dim, engine.fingerprint, state)
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
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        def merge() -> None:
            try:
                httpx.post(f"{url}/api/subjects/Alice/merge", json={"from": "Bob"}, timeout=120)
            except httpx.TransportError:
                pass  # the service was killed under it

        thread = threading.Thread(target=merge, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not any(moved > 0 for moved, _ in moves(state)):
            assert process.poll() is None and time.monotonic() < deadline, "the merge never started"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        thread.join(30)
    finally:
        process.kill()
        log.close()

    [(moved, done)] = moves(state)
    assert done == 0 and 0 < moved < MOVED, "the kill was meant to land in the middle of the merge"
    store = EdgeStore(
        settings.qdrant_path / settings.collection_name,
        spec_from_settings(settings, dim=engine.dim, pack=engine.fingerprint),
        background_index=False,
    )
    mixed = count(store, "Bob")
    store.close()
    assert 0 < mixed < MOVED  # what the kill left in the store: a mix, which start-up must finish

    services = open_services(settings, models=(engine, HeadRegistry()), batcher=False, jobs=False, keys=False)
    try:
        people = services.people
        assert people is not None
        assert {name: s.faces for name, s in people.summaries().items()} == {"Alice": KEPT + MOVED}
        assert people.state.pending_moves() == []
        assert services.store.count() == KEPT + MOVED
    finally:
        services.close()
