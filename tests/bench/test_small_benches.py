"""The small benchmarks run end to end at tiny sizes (their figures are read by people, not asserted here)."""

from __future__ import annotations

import pytest

from bench import pixels, store_gil


def test_pixels_bench_runs_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    pixels.main(["--calls", "20", "--rounds", "1", "--sides", "320"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["320"]]
    assert [row[1] for row in rows] == ["pickled", "shared"]
    assert "shared / pickled" in out


def test_store_gil_bench_runs_both_thread_settings(capsys: pytest.CaptureFixture[str]) -> None:
    store_gil.main(["--points", "300", "--searches", "20"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["300"]]
    assert [row[1] for row in rows] == ["default", "1"]
    assert all(row[-1].endswith("x") for row in rows)
