"""The test harness's own rules (tests/support.py): where the labelled eval set and the browser are required."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import in_ci, require_browser, require_eval_dir


@pytest.mark.parametrize(
    ("value", "ci"),
    [
        (None, False),
        ("", False),
        ("0", False),
        ("false", False),
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_ci_is_recognised_from_the_environment(value: str | None, ci: bool) -> None:
    assert in_ci({} if value is None else {"CI": value}) is ci


def test_present_eval_set_is_returned(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,identity\n")
    assert require_eval_dir(tmp_path, {"CI": "true"}) == tmp_path
    assert require_eval_dir(tmp_path, {}) == tmp_path


def test_missing_eval_set_fails_in_ci(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="CI must run the eval-set tests") as info:
        require_eval_dir(tmp_path / "eval", {"CI": "true"})
    assert str(tmp_path / "eval") in str(info.value)


def test_missing_eval_set_is_skipped_with_its_reason_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()  # a folder without labels.csv is not the eval set
    for env in ({}, {"CI": "false"}):
        with pytest.raises(pytest.skip.Exception, match="not found at .*OCEANO_EVAL_DIR.*skipped outside CI"):
            require_eval_dir(tmp_path / "eval", env)


@pytest.mark.parametrize(
    ("chromium", "playwright", "missing"), [(None, True, "chromium is not installed"), ("/c", False, "playwright")]
)
def test_missing_browser_fails_in_ci_and_is_skipped_elsewhere(
    chromium: str | None, playwright: bool, missing: str
) -> None:
    with pytest.raises(pytest.fail.Exception, match=f"{missing}.*CI must run the browser tests"):
        require_browser(chromium, playwright, {"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match=missing):
        require_browser(chromium, playwright, {})
    assert require_browser("/c", True, {"CI": "true"}) == "/c"
