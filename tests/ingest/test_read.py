"""An ingest read with a deadline: the reader threads behind it, kept from file to file and left behind when
stuck (tests/ingest/test_jobs.py runs a hung mount through whole jobs)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.errors import BadImage
from app.ingest import read

LIMITS: dict[str, Any] = {"max_bytes": 1 << 20, "follow_symlinks": False}


class RecordedReads:
    """read_image_bytes, recording the thread of each read; a read of `hang` waits for `released`."""

    def __init__(self, hang: Path | None = None) -> None:
        self.hang = hang
        self.released = threading.Event()
        self.threads: list[threading.Thread] = []  # kept: an ended thread's ident is given to the next one
        self.read = read.read_image_bytes

    def __call__(self, path: Path, **limits: Any) -> bytes:
        self.threads.append(threading.current_thread())
        if path == self.hang:
            self.released.wait(30)
        return self.read(path, **limits)


@pytest.fixture(autouse=True)
def short_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read, "IDLE", 0.2)


def files(tmp_path: Path, count: int) -> list[Path]:
    paths = [tmp_path / f"{i}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 10)
    return paths


def read_on_this_thread(path: Path, *, timeout: float = 5.0, stop: threading.Event | None = None) -> bytes | None:
    return read.read_with_deadline(path, timeout=timeout, stop=stop or threading.Event(), **LIMITS)


def in_a_worker(fn: Any) -> Any:
    """fn() on a new thread (a decode worker of its own, so that no reader of another test is reused)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    assert outcome, "the worker did not finish"
    return outcome[0]


def reader_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "ingest-read")


def test_a_workers_reads_share_one_reader_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread started for every file held the GIL longer than the read of a photo (py-spy, ingest of 1,500
    photos): before, five reads ran on five threads."""
    recorded = RecordedReads()
    monkeypatch.setattr(read, "read_image_bytes", recorded)
    paths = files(tmp_path, 5)
    got = in_a_worker(lambda: [read_on_this_thread(p) for p in paths])
    assert got == [p.read_bytes() for p in paths]
    assert len(recorded.threads) == 5 and all(t is recorded.threads[0] for t in recorded.threads)


def test_a_reads_error_reaches_the_worker_and_its_reader_goes_on(tmp_path: Path) -> None:
    (good,) = files(tmp_path, 1)

    def reads() -> list[Any]:
        out: list[Any] = []
        for path in (tmp_path, good):  # a folder: read_image_bytes refuses it
            try:
                out.append(read_on_this_thread(path))
            except BadImage as exc:
                out.append(exc)
        return out

    refused, data = in_a_worker(reads)
    assert isinstance(refused, BadImage) and data == good.read_bytes()


def test_a_stuck_read_is_left_behind_and_the_worker_reads_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stuck, *rest = files(tmp_path, 3)
    recorded = RecordedReads(hang=stuck)
    monkeypatch.setattr(read, "read_image_bytes", recorded)

    def reads() -> list[Any]:
        out: list[Any] = []
        try:
            read_on_this_thread(stuck, timeout=0.5)
        except BadImage as exc:
            out.append(exc)
        out.append(read_on_this_thread(rest[0]))
        stop = threading.Event()
        stop.set()
        out.append(read_on_this_thread(rest[1], stop=stop))  # None, or the bytes when the read was quicker
        out.append(read_on_this_thread(rest[1]))
        return out

    try:
        timed_out, first, _, second = in_a_worker(reads)
        assert isinstance(timed_out, BadImage) and "INGEST_FILE_TIMEOUT" in str(timed_out)
        assert (first, second) == (rest[0].read_bytes(), rest[1].read_bytes())
        assert recorded.threads[0] is not recorded.threads[1]  # the stuck reader was not asked again
    finally:
        recorded.released.set()
    deadline = time.monotonic() + 10
    while reader_threads() and time.monotonic() < deadline:  # each ends IDLE seconds after its last read
        time.sleep(0.05)
    assert reader_threads() == 0
