"""`python -m app.calibrate --feedback` and `--enrolled`: the stored feedback, or the collection's own subjects, as
labelled pairs, through the running service when one answers (it owns the embedded store), else in this process;
--apply puts the threshold in force."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from app.calibration import ThresholdStore
from app.cli.calibrate import main
from app.engine import FaceEngine
from tests.support import free_port, live_service, make_settings


def index(url: str, folder: Path, name: str, subject: str) -> str:
    r = httpx.post(
        f"{url}/api/faces", files={"file": (name, (folder / name).read_bytes())}, data={"subject": subject}, timeout=60
    )
    assert r.status_code == 201, r.text
    face_id: str = r.json()["ids"][0]
    return face_id


def test_feedback_calibration_through_the_service_then_in_process(
    tmp_path: Path,
    eval_dir: Path,
    engine: FaceEngine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(tmp_path)
    for name, value in (("STATE_DIR", tmp_path), ("QDRANT_PATH", settings.qdrant_path)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("THUMBS_DIR", str(settings.thumbs_dir))
    monkeypatch.delenv("OCEANO_API_KEY", raising=False)
    with live_service(settings) as url:
        alice = [index(url, eval_dir, n, "Alice") for n in ("img1.jpg", "img2.jpg")]
        bob = index(url, eval_dir, "img3.jpg", "Bob")
        for match, same in ((alice[1], True), (bob, False)):
            r = httpx.post(f"{url}/api/feedback", json={"query": alice[0], "match_id": match, "same_person": same})
            assert r.status_code == 201, r.text
        monkeypatch.setenv("PORT", url.rsplit(":", 1)[1])
        assert main(["--feedback"]) == 0  # the embedded store is the service's: the calibration runs there
        served = json.loads(capsys.readouterr().out)
        assert (served["genuine_pairs"], served["impostor_pairs"], served["applied"]) == (1, 1, False)

    monkeypatch.setenv("PORT", str(free_port()))  # nothing answers there now: run in this process
    assert main(["--feedback", "--apply", "0.5"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert local["applied"] and local["threshold"] == pytest.approx(served["threshold"])
    stored = ThresholdStore(tmp_path).get(settings.collection_name, engine.fingerprint)
    assert stored is not None and stored.threshold == pytest.approx(local["threshold"])
    assert stored.source.startswith("feedback")


def test_enrolled_calibration_through_the_service_then_in_process(
    tmp_path: Path,
    eval_dir: Path,
    engine: FaceEngine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(tmp_path)
    for name, value in (("STATE_DIR", tmp_path), ("QDRANT_PATH", settings.qdrant_path)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("THUMBS_DIR", str(settings.thumbs_dir))
    monkeypatch.delenv("OCEANO_API_KEY", raising=False)
    with live_service(settings) as url:
        for name in ("img1.jpg", "img2.jpg", "img4.jpg"):  # id01
            index(url, eval_dir, name, "Alice")
        for name in ("img3.jpg", "img12.jpg"):  # id02
            index(url, eval_dir, name, "Bob")
        monkeypatch.setenv("PORT", url.rsplit(":", 1)[1])
        assert main(["--enrolled", "--per-subject", "2"]) == 0  # runs in the service that owns the store
        served = json.loads(capsys.readouterr().out)
        assert (served["scored"], served["genuine_pairs"], served["impostor_pairs"]) == (4, 2, 4)
        assert not served["applied"]

    monkeypatch.setenv("PORT", str(free_port()))  # nothing answers there now: run in this process
    assert main(["--enrolled", "--per-subject", "2", "--apply", "1e-3"]) == 0  # the FAR the service used
    local = json.loads(capsys.readouterr().out)
    assert local["applied"] and local["threshold"] == pytest.approx(served["threshold"])
    stored = ThresholdStore(tmp_path).get(settings.collection_name, engine.fingerprint)
    assert stored is not None and stored.threshold == pytest.approx(local["threshold"])
    assert stored.source.startswith("enrolled subjects")


@pytest.mark.parametrize(
    "argv", [[], ["--feedback", "photos/"], ["--enrolled", "--feedback"], ["--enrolled", "--max-faces", "2"]]
)
def test_one_source_of_pairs_within_the_bounds(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
