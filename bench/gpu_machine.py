"""bench.gpu's view of the machine: progress lines, nvidia-smi (the GPU, its utilisation and memory sampled
during a level), load average, and the CPU seconds of a process tree."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.load_client import stat_cpu_seconds

STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[bench.gpu {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ machine
def nvidia_smi(*query: str) -> list[list[str]] | None:
    """Rows of `nvidia-smi --query-...` for the GPU this process would use; None without nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    index = ["-i", visible] if visible.isdigit() and query[0].startswith("--query-gpu") else []
    try:
        out = subprocess.run(
            ["nvidia-smi", *query, *index, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    import onnxruntime

    gpu = nvidia_smi("--query-gpu=name,memory.total,driver_version")
    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "gpu": {"name": gpu[0][0], "memory_mib": float(gpu[0][1]), "driver": gpu[0][2]} if gpu else None,
    }


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]"
        return None


class GpuSampler:
    """nvidia-smi's utilisation and memory of the GPU every `period` seconds in a thread, and the memory of the
    watched processes where nvidia-smi can see their ids (not inside every container)."""

    def __init__(self, pids: Sequence[int] = (), period: float = 0.5, skip: float = 0.0) -> None:
        self.pids = {str(p) for p in pids}
        self.period = period
        self.counted_from = time.monotonic() + skip  # samples of the warm-up are not kept
        self.util: list[float] = []
        self.memory: list[float] = []
        self.process_memory: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = nvidia_smi("--query-gpu=utilization.gpu,memory.used")
            if rows is None:
                return  # no GPU: nothing to sample
            if time.monotonic() < self.counted_from:
                self._stop.wait(self.period)
                continue
            util, memory = number(rows[0][0]), number(rows[0][1])
            if util is not None:
                self.util.append(util)
            if memory is not None:
                self.memory.append(memory)
            apps = nvidia_smi("--query-compute-apps=pid,used_memory") or []
            mine = [number(row[1]) for row in apps if len(row) > 1 and row[0] in self.pids]
            if any(m is not None for m in mine):
                self.process_memory.append(sum(m for m in mine if m is not None))
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def figures(self) -> dict[str, float | None]:
        return {
            "gpu_util_mean": round(float(np.mean(self.util)), 1) if self.util else None,
            "gpu_util_max": max(self.util) if self.util else None,
            "gpu_mem_max_mib": max(self.memory) if self.memory else None,
            "gpu_mem_service_max_mib": max(self.process_memory) if self.process_memory else None,
        }


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (a service with worker processes spends its CPU in them too)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def thread_cpu_seconds(pid: int, os_name_prefix: str) -> float | None:
    """CPU seconds of the threads of `pid` whose OS name (/proc/PID/task/TID/comm) starts with the prefix; None when
    it has none (a service without them, or not Linux)."""
    total, found = 0.0, False
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if not (task / "comm").read_text().startswith(os_name_prefix):
                continue
            total += stat_cpu_seconds(task / "stat")
        except (OSError, IndexError):
            continue
        found = True
    return total if found else None


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += stat_cpu_seconds(Path(f"/proc/{pid}/stat"))
        except (OSError, IndexError):
            continue
    return total
