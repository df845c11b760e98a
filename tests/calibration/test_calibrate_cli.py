"""python -m app.calibrate on the labelled eval set with the real bundled models, and the threshold it stores."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from app.calibration import CalibratedThreshold, ThresholdStore
from app.calibration.thresholds import DEFAULT_THRESHOLDS, default_threshold
from app.cli.calibrate import main
from app.engine import FaceEngine
from app.errors import IncompatibleState
from tests.support import read_bgr


def _embed(engine: FaceEngine, path: Path) -> np.ndarray:
    faces = engine.analyze_batch([read_bgr(path)])[0]
    return max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))).embedding


def test_calibrate_reports_and_applies_a_threshold_that_holds_on_the_labelled_pairs(
    eval_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: FaceEngine
) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "report"
    assert main([str(eval_dir), "--out", str(out), "--apply", "1e-3", "--bootstrap", "20", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["genuine_pairs"] > 100 and report["impostor_pairs"] > 1000  # 60 labelled photos, 13 people
    assert {t["far_target"] for t in report["targets"]} == {1e-2, 1e-3, 1e-4}
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "EER" in (out / "report.md").read_text()

    stored = ThresholdStore(tmp_path / "state").get("faces", engine.fingerprint)
    assert stored is not None and stored.far_target == 1e-3
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "calibration.json").st_mode) == 0o600

    # The applied threshold judged on the eval set's own pair list (pairs.csv, labelled apart from labels.csv).
    with (eval_dir / "pairs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    kept = sorted({r["file1"] for r in rows})[:20]  # pairs among 20 photos: enough pairs, a third of the embedding
    rows = [r for r in rows if r["file1"] in kept and r["file2"] in kept]
    assert 10 <= sum(r["same"] == "1" for r in rows) and 10 <= sum(r["same"] == "0" for r in rows)
    vectors = {f: _embed(engine, eval_dir / f) for r in rows for f in (r["file1"], r["file2"])}
    same = np.array([r["same"] == "1" for r in rows])
    scores = np.array([float(vectors[r["file1"]] @ vectors[r["file2"]]) for r in rows])
    accepted = scores >= stored.threshold
    assert (accepted & ~same).sum() <= 1  # FAR 1e-3 of ~1,600 impostor pairs lets one through at most
    assert (~accepted & same).mean() <= 0.05


def test_a_labels_file_without_its_columns_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "labels.csv").write_text("name,person\na.jpg,x\n")
    assert main([str(tmp_path), "--quiet"]) == 1
    assert "file,identity" in capsys.readouterr().err


def test_threshold_store_keeps_one_entry_per_collection_and_fingerprint(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path)
    assert store.in_force("faces", "fp1", "bundled") == default_threshold("bundled")
    assert default_threshold("bundled").threshold == DEFAULT_THRESHOLDS["bundled"]
    store.put("faces", "fp1", CalibratedThreshold(threshold=0.4, source="test"))
    store.put("faces", "fp2", CalibratedThreshold(threshold=0.5, source="test"))
    assert store.in_force("faces", "fp1", "bundled").threshold == 0.4
    assert store.get("faces", "fp2").threshold == 0.5  # type: ignore[union-attr]
    assert store.get("other", "fp1") is None
    (tmp_path / "calibration.json").write_text("[1, 2")
    with pytest.raises(IncompatibleState, match="calibration"):
        store.get("faces", "fp1")
