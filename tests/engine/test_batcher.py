"""The request batcher's dispatcher threads as the operating system sees them: each named (Linux's comm), so that a
benchmark can read the CPU time of the serial work that bounds a GPU machine (bench.gpu's dispatcher column)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine import FaceEngine, InferenceBatcher, InferenceGate
from app.engine.batcher import DISPATCHER_OS_NAME
from tests.support import wait_until


@pytest.fixture
def two_dispatchers(engine: FaceEngine) -> Iterator[InferenceBatcher]:
    own = FaceEngine.__new__(FaceEngine)  # the same loaded models behind a gate of two slots
    own.__dict__.update(engine.__dict__)
    own.gate = InferenceGate(2, 2.0)
    batcher = InferenceBatcher(own, max_images=8)
    yield batcher
    batcher.close()


def os_thread_names() -> set[str]:
    names = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            continue
    return names


@pytest.mark.skipif(sys.platform != "linux", reason="OS thread names are read from Linux's /proc")
def test_each_dispatcher_thread_has_its_os_name(two_dispatchers: InferenceBatcher) -> None:
    expected = {f"{DISPATCHER_OS_NAME}-0", f"{DISPATCHER_OS_NAME}-1"}
    wait_until(lambda: expected <= os_thread_names(), what="the dispatcher threads named")
