"""One file's bytes for an ingest run, with a deadline: a read that hangs (a dead network mount) must not hold a
decode worker, nor a cancelled job, for longer than INGEST_FILE_TIMEOUT."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from app.errors import BadImage
from app.imaging import read_image_bytes

POLL = 0.25  # seconds between looks at the stop event while a read is under way


def read_with_deadline(
    path: Path, *, max_bytes: int, follow_symlinks: bool, timeout: float, stop: threading.Event
) -> bytes | None:
    """The file's bytes (a regular file only, see read_image_bytes), read on a thread of its own; BadImage when the
    read takes over `timeout` seconds, None when `stop` is set first. A read left behind goes on in its daemon
    thread (Python cannot interrupt a blocked read); the worker that asked is free at once."""
    result: list[bytes | BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            result.append(read_image_bytes(path, max_bytes=max_bytes, follow_symlinks=follow_symlinks))
        except BaseException as exc:
            result.append(exc)
        finally:
            done.set()

    threading.Thread(target=read, name="ingest-read", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not done.wait(min(POLL, max(0.0, deadline - time.monotonic()))):
        if stop.is_set():
            return None
        if time.monotonic() >= deadline:
            raise BadImage(
                f"reading the file took over {timeout:g} s (INGEST_FILE_TIMEOUT): skipped; a stuck network mount or "
                f"device?"
            )
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
