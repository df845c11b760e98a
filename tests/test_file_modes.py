"""Files the service makes are its own: `python -m app`, started with a permissive umask (022), indexes a photo and
runs an ingest job; then every file under STATE_DIR (crops, the Qdrant Edge segments, the SQLite state, the keys
and erasure journals) is mode 0600 and every folder 0700."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import REPO, Photos, face_folder, free_port


def test_everything_the_service_writes_is_private_whatever_the_umask(tmp_path: Path) -> None:
    state, photos = tmp_path / "state", tmp_path / "photos"
    face_folder(photos, 2)
    port = free_port()
    env = {
        **os.environ,
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(state / "qdrant"),
        "THUMBS_DIR": str(state / "thumbs"),
        "INGEST_ROOTS": str(photos),
        "LOG_LEVEL": "warning",
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        preexec_fn=lambda: os.umask(0o022),  # an operator's usual umask: files 0644 unless the service says otherwise
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            deadline = time.monotonic() + 180
            while True:
                assert service.poll() is None, "the service exited"
                assert time.monotonic() < deadline, "the service did not start"
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            upload = {"file": ("yao.jpg", Photos.yaoming.read_bytes(), "image/jpeg")}
            assert http.post("/api/faces", files=upload).status_code == 201
            job = http.post("/api/ingest", json={"path": str(photos)}).json()
            while job["status"] not in ("completed", "failed", "cancelled"):
                assert time.monotonic() < deadline, f"the job stayed {job['status']}"
                time.sleep(0.2)
                job = http.get(f"/api/jobs/{job['id']}").json()
            assert job["status"] == "completed" and job["counts"]["faces_added"] == 2
    finally:
        service.terminate()
        service.wait(60)
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jpg" for p in files) and (state / "ingest.sqlite3").is_file()
    assert any("qdrant" in p.parts for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in [state, *state.rglob("*")]}
    wrong = {path: mode for path, mode in modes.items() if mode != ("0o700" if (tmp_path / path).is_dir() else "0o600")}
    assert not wrong, wrong
