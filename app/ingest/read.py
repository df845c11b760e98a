"""One file's bytes for an ingest run, with a deadline: a read that hangs (a dead network mount) must not hold a
decode worker, nor a cancelled job, for longer than INGEST_FILE_TIMEOUT."""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.errors import BadImage
from app.imaging import read_image_bytes

POLL = 0.25  # seconds between looks at the stop event while a read is under way
IDLE = 5.0  # seconds a reader thread waits for its worker's next file before it ends

_local = threading.local()  # each decode worker's reader


class _Reader:
    """A thread that reads files for one decode worker, one at a time, kept from file to file: a thread started
    per file cost the run more time holding the GIL than the read of a photo. A reader whose read outlived its
    deadline is left to finish alone; its worker starts another."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[Callable[[], bytes]] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._ended = False
        threading.Thread(target=self._serve, name="ingest-read", daemon=True).start()

    def submit(self, call: Callable[[], bytes]) -> bool:
        """False when the thread has ended (idle for IDLE seconds): ask a new reader."""
        with self._lock:
            if self._ended:
                return False
            self.calls.put(call)
            return True

    def _serve(self) -> None:
        while True:
            try:
                call = self.calls.get(timeout=IDLE)
            except queue.Empty:
                with self._lock:  # submit() checks _ended under the same lock: no call is left unserved
                    if self.calls.empty():
                        self._ended = True
                        return
                continue
            try:
                self.results.put(call())
            except BaseException as exc:
                self.results.put(exc)


def read_with_deadline(
    path: Path, *, max_bytes: int, follow_symlinks: bool, timeout: float, stop: threading.Event
) -> bytes | None:
    """The file's bytes (a regular file only, see read_image_bytes), read on the worker's reader thread; BadImage
    when the read takes over `timeout` seconds, None when `stop` is set first. A read left behind goes on in its
    daemon thread (Python cannot interrupt a blocked read); the worker that asked is free at once."""
    call = functools.partial(read_image_bytes, path, max_bytes=max_bytes, follow_symlinks=follow_symlinks)
    reader: _Reader | None = getattr(_local, "reader", None)
    if reader is None or not reader.submit(call):
        reader = _local.reader = _Reader()
        reader.submit(call)
    deadline = time.monotonic() + timeout
    while True:
        try:
            outcome = reader.results.get(timeout=min(POLL, max(0.0, deadline - time.monotonic())))
            break
        except queue.Empty:
            pass
        if stop.is_set():
            _local.reader = None  # still reading: left behind
            return None
        if time.monotonic() >= deadline:
            _local.reader = None
            raise BadImage(
                f"reading the file took over {timeout:g} s (INGEST_FILE_TIMEOUT): skipped; a stuck network mount or "
                f"device?"
            )
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
