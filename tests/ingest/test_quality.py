"""Ingest with a quality gate: jobs count the faces flagged and refused (progress, the job's wire counts), and
`python -m app.ingest` prints them in its summary; refused faces are not stored, their files are done."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import pytest

from app.cli import ingest
from app.engine import FaceEngine
from app.ingest.model import CountsOut, FileStatus
from app.ingest.report import format_summary, progress_line
from tests.support import Photos, Workspace, make_settings, read_bgr, workspace


def photos_sharp_and_blurred(root: Path) -> Path:
    """Yao Ming as he is (quality 1.0) and blurred (quality 0): one face each."""
    root.mkdir(parents=True)
    (root / "sharp.jpg").write_bytes(Photos.yaoming.read_bytes())
    cv2.imwrite(str(root / "blurred.jpg"), cv2.GaussianBlur(read_bgr(Photos.yaoming), (0, 0), sigmaX=6.0))
    return root


@pytest.mark.parametrize("policy", ["flag", "refuse"])
def test_a_job_counts_the_faces_flagged_or_refused(tmp_path: Path, ingest_engine: FaceEngine, policy: str) -> None:
    root = photos_sharp_and_blurred(tmp_path / "photos")
    ws = Workspace(make_settings(tmp_path / "state", quality_min=0.5, quality_policy=policy), ingest_engine)
    try:
        job = ws.job(root, batch=8, workers=2)
        job.run()
        counts = job.progress().counts
        assert counts.ingested == 2 and counts.failed == 0
        if policy == "flag":
            assert (counts.faces_added, counts.faces_flagged, counts.faces_refused) == (2, 1, 0)
            flagged = {m.payload["file"]: m.payload["quality_flagged"] for m in ws.store.retrieve(sorted(ws.ids()))}
            assert flagged == {str(root / "sharp.jpg"): False, str(root / "blurred.jpg"): True}
        else:
            assert (counts.faces_added, counts.faces_flagged, counts.faces_refused) == (1, 0, 1)
            assert ws.store.count() == 1
        assert all(r.status is FileStatus.DONE for r in ws.state.files())  # refused: handled, nothing to redo
        wire = CountsOut.model_validate(counts.to_dict())
        assert (wire.faces_flagged, wire.faces_refused) == (counts.faces_flagged, counts.faces_refused)
        assert f"({counts.faces_flagged} flagged, {counts.faces_refused} refused for quality)" in progress_line(
            job.progress()
        )
        assert "refused" in format_summary(str(root), job.progress(), "completed", None)
    finally:
        ws.close()


def test_the_cli_summary_shows_the_faces_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ingest_engine: FaceEngine, caplog: pytest.LogCaptureFixture
) -> None:
    root = photos_sharp_and_blurred(tmp_path / "photos")
    state = tmp_path / "state"
    for name, value in {
        "STATE_DIR": state,
        "QDRANT_PATH": state / "qdrant",
        "THUMBS_DIR": state / "thumbs",
        "QUALITY_MIN": "0.5",
        "QUALITY_POLICY": "refuse",
        "PORT": "1",  # no service answers there: the command runs the job itself
    }.items():
        monkeypatch.setenv(name, str(value))
    with caplog.at_level(logging.INFO, logger="app"):
        assert ingest.main(["--path", str(root), "--local"]) == ingest.EXIT_OK
    assert "faces added  1" in caplog.text and "quality      0 flagged, 1 refused (under QUALITY_MIN)" in caplog.text
    with workspace(state, ingest_engine) as ws:
        assert ws.store.count() == 1
