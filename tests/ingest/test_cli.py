"""python -m app.ingest: in-process runs, submission to a running service (live uvicorn), detach, SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import ingest
from app.engine import FaceEngine
from app.ingest.model import STATE_FILE, FileStatus
from app.ingest.pipeline import INFER_BATCH
from app.ingest.state import IngestState
from tests.support import (
    FIVE_FACES,
    REPO,
    engine_hold_env,
    face_folder,
    free_port,
    held_engine_calls,
    live_service,
    make_settings,
    wait_until,
    workspace,
    write_variant,
)

OPTIONS = (
    "--path",
    "--folder",
    "--batch",
    "--workers",
    "--no-resume",
    "--dry-run",
    "--exclude",
    "--follow-symlinks",
    "--url",
    "--local",
    "--attach",
    "--cancel",
)


@pytest.fixture
def state_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """STATE_DIR and friends for Settings() read by the command, and a PORT where no service answers."""
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIR", str(state))
    monkeypatch.setenv("QDRANT_PATH", str(state / "qdrant"))
    monkeypatch.setenv("THUMBS_DIR", str(state / "thumbs"))
    monkeypatch.setenv("PORT", str(free_port()))
    return state


def default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal, even when the tests run where SIGINT is ignored (a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command_env(state: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "STATE_DIR": str(state),
        "QDRANT_PATH": str(state / "qdrant"),
        "THUMBS_DIR": str(state / "thumbs"),
        "PORT": str(port),
        "PYTHONPATH": str(REPO),
    }


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option in text, option
    assert "default 1024" in text and "default 32" in text


def test_folder_is_an_alias_of_path() -> None:
    args = ingest.build_parser().parse_args(
        ["--folder", "/data/images", "--batch", "100", "--exclude", "*.gif", "--exclude", "tmp/*", "--no-resume"]
    )
    assert (args.path, args.batch, args.exclude, args.resume) == ("/data/images", 100, ["*.gif", "tmp/*"], False)
    with pytest.raises(SystemExit):
        ingest.build_parser().parse_args(["--path", "x", "--batch", "0"])


def test_missing_path_is_refused(state_env: Path, tmp_path: Path) -> None:
    assert ingest.main(["--path", str(tmp_path / "nowhere")]) == ingest.EXIT_USAGE


def test_runs_in_process_when_no_service_answers(
    state_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ingest_engine: FaceEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "photos"
    face_folder(root, 4)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    monkeypatch.chdir(tmp_path)  # a relative --path is resolved by the command
    with caplog.at_level(logging.INFO, logger="app"):
        assert ingest.main(["--path", "photos", "--batch", "2"]) == ingest.EXIT_OK
    summary = caplog.text
    assert "ingest of" in summary and "completed" in summary and "faces added  4" in summary
    assert "failed       1; top reasons: cannot read the JPEG header" in summary
    with workspace(state_env, ingest_engine) as ws:
        assert ws.store.count() == 4
        records = ws.state.files()
        assert all(Path(r.path).is_absolute() for r in records)
        assert sorted(r.status.value for r in records) == ["done"] * 4 + ["failed"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app"):
        assert ingest.main(["--path", str(root), "--dry-run"]) == ingest.EXIT_OK
    assert "4 already done" in caplog.text


def test_submits_to_the_running_service_and_follows_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "photos"
    face_folder(root, 5)
    settings = make_settings(tmp_path / "state", ingest_roots=str(tmp_path))
    with live_service(settings) as url:
        port = url.rsplit(":", 1)[1]
        for name, value in (
            ("STATE_DIR", settings.state_dir),
            ("QDRANT_PATH", settings.qdrant_path),
            ("THUMBS_DIR", settings.thumbs_dir),
            ("PORT", port),
        ):
            monkeypatch.setenv(name, str(value))
        with caplog.at_level(logging.INFO, logger="app"):
            # no --url: the command finds the service on PORT, as in `docker exec ... python3 -m app.ingest`
            assert ingest.main(["--path", str(root), "--batch", "3"]) == ingest.EXIT_OK
        assert "submitted" in caplog.text and "faces added  5" in caplog.text
        jobs = httpx.get(f"{url}/api/jobs").json()["jobs"]
        assert len(jobs) == 1
        assert (jobs[0]["path"], jobs[0]["status"], jobs[0]["options"]["batch"]) == ("photos", "completed", 3)
        assert httpx.get(f"{url}/status").json()["vectors"] == 5

        # the embedded store is the service's: an in-process run is refused with a clear message
        caplog.clear()
        assert ingest.main(["--path", str(root), "--local"]) == ingest.EXIT_FAILED
        assert "already open in another process" in caplog.text

        assert ingest.main(["--cancel", jobs[0]["id"]]) == ingest.EXIT_OK  # finished jobs stay as they are
        assert httpx.get(f"{url}/api/jobs/{jobs[0]['id']}").json()["status"] == "completed"
    assert ingest.main(["--path", str(root), "--url", url]) == ingest.EXIT_FAILED  # --url given: it must answer


def test_ctrl_c_detaches_and_the_job_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "photos"
    face_folder(root, 16)
    settings = make_settings(tmp_path / "state", ingest_roots=str(tmp_path))
    released = threading.Event()  # the job's engine calls wait until the command has detached
    monkeypatch.setattr(FaceEngine, "analyze_batch", held_engine_calls(FaceEngine.analyze_batch, 0, released.is_set))
    with caplog.at_level(logging.INFO, logger="app.api.context"), live_service(settings) as url:

        def followed() -> bool:  # the command polls its job: it is inside follow_job
            return any(getattr(r, "path", "").startswith("/api/jobs/") for r in caplog.records)

        process = subprocess.Popen(
            [sys.executable, "-m", "app.ingest", "--path", str(root), "--batch", "1"],
            env=command_env(settings.state_dir, int(url.rsplit(":", 1)[1])),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=default_sigint,
        )
        try:
            wait_until(lambda: followed() or process.poll() is not None, what="the command following its job")
            process.send_signal(signal.SIGINT)  # while it follows: the job cannot have finished, it is held
            output, _ = process.communicate(timeout=60)
            job = httpx.get(f"{url}/api/jobs").json()["jobs"][0]
            assert job["status"] in ("pending", "processing") and job["counts"]["done"] == 0  # held until now
        finally:
            process.kill()
            released.set()
        assert process.returncode == ingest.EXIT_OK, output
        assert "detached from job" in output and f"--cancel {job['id']}" in output and "DELETE" in output
        wait_until(
            lambda: httpx.get(f"{url}/api/jobs/{job['id']}").json()["status"] not in ("pending", "processing"),
            what="the job finishing",
        )
        job = httpx.get(f"{url}/api/jobs/{job['id']}").json()
        assert job["status"] == "completed" and job["counts"]["ingested"] == 16  # not cancelled by the detach


def test_sigkill_then_resume_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, state_env: Path, ingest_engine: FaceEngine
) -> None:
    root = tmp_path / "photos"
    face_folder(root, 72)
    for k in range(4):  # a few group photos: files with five faces each (even k: not mirrored)
        write_variant(FIVE_FACES, root / f"set{k % 3}" / f"group{k}.jpg", 100 + 2 * k)
    with workspace(tmp_path / "clean", ingest_engine) as ws:
        ws.job(root).run()
        clean_ids = ws.ids()
    assert len(clean_ids) == 72 + 4 * 5

    hold, _ = engine_hold_env(tmp_path / "hold", 3)  # never released: killed while held, after 3+ images
    process = subprocess.Popen(
        [sys.executable, "-m", "app.ingest", "--path", str(root), "--batch", "1"],
        env={**command_env(state_env, int(os.environ["PORT"])), **hold},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_done(state_env, process, 3)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
    with workspace(state_env, ingest_engine) as ws:
        records = ws.state.files()
        assert 3 <= len(records) < 3 + INFER_BATCH  # the calls let through before the hold, at most
        assert all(r.status is FileStatus.DONE and r.faces == (5 if "group" in r.path else 1) for r in records)
        # the state is never ahead of the store: every file recorded done has its recorded faces stored
        assert ws.state_ahead_of_store() == {}

    assert ingest.main(["--path", str(root)]) == ingest.EXIT_OK
    with workspace(state_env, ingest_engine) as ws:
        assert ws.ids() == clean_ids and ws.store.count() == 92
        assert [r.status for r in ws.state.files()] == [FileStatus.DONE] * 76
        assert ws.state_ahead_of_store() == {}


def wait_for_done(state: Path, process: subprocess.Popen[Any], files: int) -> int:
    done = 0

    def enough() -> bool:
        nonlocal done
        assert process.poll() is None, "the command ended before it was stopped"
        if (state / STATE_FILE).exists():
            db = IngestState(state / STATE_FILE)
            done = db.file_counts().get(FileStatus.DONE.value, 0)
            db.close()
        return done >= files

    wait_until(enough, seconds=120, what=f"{files} files done")
    return done


def test_ctrl_c_stops_a_local_run_cleanly_and_it_resumes(
    tmp_path: Path, state_env: Path, ingest_engine: FaceEngine
) -> None:
    root = tmp_path / "photos"
    face_folder(root, 80)
    hold, release = engine_hold_env(tmp_path / "hold", 2)  # held after 2+ images until the stop was asked
    process = subprocess.Popen(
        [sys.executable, "-m", "app.ingest", "--path", str(root), "--batch", "2"],
        env={**command_env(state_env, int(os.environ["PORT"])), **hold},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for_done(state_env, process, 2)
        process.send_signal(signal.SIGINT)
        wait_until(lambda: any("stopping after the current batch" in line for line in lines), what="the stop asked")
        release.touch()
        process.wait(60)
        reader.join(10)
        output = "".join(lines)
    finally:
        process.kill()
    assert process.returncode == ingest.EXIT_INTERRUPTED, output
    assert "interrupted: everything done so far is kept" in output and "Fatal" not in output
    with workspace(state_env, ingest_engine) as ws:
        done = len(ws.state.files())
        # At most: the calls let through before the hold, and one held call per inference worker (two here).
        assert (
            2 <= done < 2 + 3 * INFER_BATCH and ws.store.count() == done
        )  # what was analysed before the stop was committed
        assert ws.state_ahead_of_store() == {}
    assert ingest.main(["--path", str(root)]) == ingest.EXIT_OK
    with workspace(state_env, ingest_engine) as ws:
        assert ws.store.count() == 80 and len(ws.state.files()) == 80
