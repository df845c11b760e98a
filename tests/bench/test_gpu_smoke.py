"""bench/gpu.py, the GPU benchmark, smoke-tested on the CPU with tiny durations: it runs every part for real (the
Oceano service and the plain insightface service under load, python -m app.ingest, the engine stages) and writes
every section of its JSON with figures. Behaviour only: nothing here asserts a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.cli.ingest import MAX_CPU_INFER_WORKERS
from tests.support import REPO

DEADLINE_S = 600  # a hung service or load generator fails the test instead of hanging it
BATCHES = [1, 2]
INGEST_IMAGES = 8


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_level(level: dict[str, Any], clients: int) -> None:
    assert level["clients"] == clients
    assert level["ok"] > 0 and level["ok_per_s"] > 0, level  # the service answered searches under load
    for key in ("p50_ms", "p95_ms", "p99_ms", "service_cpu_cores"):
        assert is_number(level[key]), (key, level)
    assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
    assert isinstance(level["n503"], int)
    assert level["errors"] == {}, level  # no answer but 200 or 503, no transport error
    for key in ("gpu_util_mean", "gpu_util_max", "gpu_mem_max_mib"):
        assert level[key] is None, (key, level)  # a CPU machine: n/a
    # The process owning the engine is one of the service's processes (here the only one).
    assert 0 < level["core_cpu_cores"] <= level["service_cpu_cores"] + 0.01, level
    assert level["core_cpu_ms_per_answer"] > 0, level


def check_dispatcher(level: dict[str, Any]) -> None:
    """Oceano's request batcher's dispatcher threads, found by their OS names: their CPU is part of the core's."""
    assert 0 < level["dispatcher_cpu_cores"] <= level["core_cpu_cores"] + 0.01, level
    assert level["dispatcher_cpu_ms_per_answer"] > 0, level


def test_gpu_bench_runs_every_part_on_the_cpu(eval_dir: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "bench.gpu",
        "--clients",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "0.5",
        "--ingest-images",
        str(INGEST_IMAGES),
        "--providers",
        "cpu",
        "--batches",
        ",".join(map(str, BATCHES)),
        "--stage-reps",
        "1",
        "--index-photos",
        "2",
        "--photos",
        str(eval_dir),
        "--json",
        str(report_path),
        "--variant",
        "three:GPU_CONCURRENCY=3 REQUEST_BATCH=4",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    report = json.loads(report_path.read_text())
    assert report["errors"] == {}
    assert report["machine"]["gpu"] is None
    assert "CPUExecutionProvider" in report["machine"]["onnxruntime_providers"]

    search = report["search"]
    for name in ("oceano", "plain"):
        part = search[name]
        assert part["query_faces"] == 1, part  # the 640 px query holds one face for both services
        assert [lv["clients"] for lv in part["levels"]] == [2]
        check_level(part["levels"][0], 2)
    assert search["oceano"]["providers"] == ["CPUExecutionProvider"]
    check_dispatcher(search["oceano"]["levels"][0])
    assert search["plain"]["levels"][0]["dispatcher_cpu_cores"] is None  # no such threads there: n/a
    # A variant: the same load on a service started with more settings, compared with Oceano's at each level.
    three = search["variants"]["three"]
    assert three["settings"] == {"GPU_CONCURRENCY": "3", "REQUEST_BATCH": "4"} and three["query_faces"] == 1
    assert (search["oceano"]["gpu_concurrency"], three["gpu_concurrency"]) == (1, 3)  # the setting took effect
    assert [lv["clients"] for lv in three["levels"]] == [2]
    check_level(three["levels"][0], 2)
    assert "-- search under load: oceano [three: GPU_CONCURRENCY=3 REQUEST_BATCH=4]" in run.stdout
    assert "-- oceano [three] / oceano, answers 200/s: 2 clients" in run.stdout
    assert [r["clients"] for r in search["ratio"]] == [2] and is_number(search["ratio"][0]["ratio"])

    ingest = report["ingest"]
    assert ingest["images"] == INGEST_IMAGES and ingest["ingested"] == INGEST_IMAGES
    assert isinstance(ingest["faces_added"], int) and ingest["faces_added"] >= 1
    assert is_number(ingest["images_per_s"]) and ingest["images_per_s"] > 0
    # The variant's ingest: the same files into a store of its own, its setting seen in the run's log (on a CPU
    # the defaults run one inference worker per core, at most 8; GPU_CONCURRENCY=3 three).
    three_ingest = report["ingest_variants"]["three"]
    assert three_ingest["ingested"] == INGEST_IMAGES and three_ingest["faces_added"] == ingest["faces_added"]
    assert ingest["inference_workers"] == min(os.cpu_count() or 1, MAX_CPU_INFER_WORKERS)
    assert three_ingest["inference_workers"] == 3
    assert "-- the same [three: GPU_CONCURRENCY=3 REQUEST_BATCH=4]" in run.stdout

    stages = report["stages"]
    assert stages["providers"][0] == "CPUExecutionProvider" and stages["batches"] == BATCHES
    assert stages["gpu"]["gpu_mem_max_mib"] is None  # a CPU machine: n/a
    rows = {(r["model"], r["batch"]): r for r in stages["rows"]}
    models = ["detector", "recognizer", *(f"head {h}" for h in stages["heads"]), "engine call"]
    assert set(rows) == {(m, b) for m in models for b in BATCHES}
    for (model, batch), row in rows.items():
        for key in ("first_ms", "warm_ms", "warm_ms_per_item", "items_per_s"):
            assert is_number(row[key]) and row[key] > 0, (model, batch, key, row)
    # the ONNX runs are seen through each model's session (where an engine keeps it as `session`, as this one does)
    assert all(row["onnx_first_runs"] >= 1 and row["onnx_warm_ms"] > 0 for row in rows.values()), rows
    assert "-- engine stages" in run.stdout and "-- search under load: plain" in run.stdout
