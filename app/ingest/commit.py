"""The commit buffer of an ingest run: files whose faces are analysed wait here for their upsert, and are
written in chunks of about --batch points (a file's points never split across two upserts)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tenacity import Retrying, stop_after_attempt, stop_after_delay, stop_any, stop_when_event_set, wait_exponential

from app.ingest.model import FileRecord, RetryPolicy
from app.service import IndexedImage
from app.store import FacePoint

logger = logging.getLogger(__name__)

COMMIT_INTERVAL = 10.0  # seconds: commit at least this often even when --batch points have not piled up


class EntryKind(StrEnum):
    INGESTED = "ingested"
    NO_FACE = "no_face"
    SKIPPED = "skipped"  # same content as recorded, new mtime: only the record is refreshed
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Entry:
    """One file's work waiting for the next upsert: its record and points; its pixels are already released."""

    record: FileRecord
    kind: EntryKind
    result: IndexedImage | None = None  # None: nothing to write to the store
    points: tuple[FacePoint, ...] = ()


class CommitBuffer:
    """Pending entries in order, and those being written. `write` puts entries into the store and the state
    (and may raise: the entries are then dropped, not done, and redone by the next run); `written` counts
    them, called under `lock` in the same step as they stop being in progress, so a progress snapshot taken
    under `lock` never sees a file in neither place."""

    def __init__(
        self,
        *,
        batch: int,
        write: Callable[[list[Entry]], None],
        written: Callable[[list[Entry]], None],
        interval: float = COMMIT_INTERVAL,
    ) -> None:
        self.batch = batch
        self.interval = interval
        self.lock = threading.Lock()
        self._write = write
        self._written = written
        self._write_lock = threading.Lock()  # one upsert at a time
        self._pending: list[Entry] = []
        self._pending_points = 0  # the points of _pending, kept as they come and go: take() runs per image
        self._committing: list[Entry] = []  # taken from _pending, being written (both under `lock`)
        self._pending_since = time.monotonic()

    def add(self, *entries: Entry) -> None:
        with self.lock:
            self._pending.extend(entries)
            self._pending_points += _points(entries)

    def waiting(self) -> list[Entry]:
        """Pending and being written; call holding `lock`."""
        return self._pending + self._committing

    def clear(self) -> list[Entry]:
        """Drop what is left: a failure's uncommitted files are not done, and the next run redoes them."""
        with self.lock:
            dropped = self._pending + self._committing
            self._pending.clear()
            self._pending_points = 0
            self._committing.clear()
        return dropped

    def take(self, *, force: bool) -> list[Entry]:
        """The pending files due for an upsert: the leading ones holding about `batch` points; all of them when
        `force`, when they have waited `interval`, or when `batch` files without points have piled up."""
        with self.lock:
            pending = self._pending
            cut = 0
            if (
                force
                or len(pending) >= self.batch
                or (pending and time.monotonic() - self._pending_since >= self.interval)
            ):
                cut = len(pending)
            elif self._pending_points >= self.batch:  # the scan runs once per upsert, not at every call
                points = 0
                for i, entry in enumerate(pending):
                    points += len(entry.points)
                    if points >= self.batch:
                        cut = i + 1
                        break
            taken = pending[:cut]
            del pending[:cut]
            self._pending_points -= _points(taken)
            if taken:
                self._pending_since = time.monotonic()
                self._committing.extend(taken)
            return taken

    def commit_due(self) -> bool:
        """Commit whatever is due; True when something was written."""
        wrote = False
        while entries := self.take(force=False):
            wrote = self.commit(entries) or wrote
        return wrote

    def commit(self, entries: list[Entry]) -> bool:
        """Write them; only then are they counted done. True when something was written."""
        if not entries:
            return False
        written = False
        try:
            with self._write_lock:
                self._write(entries)
            written = True
        finally:
            with self.lock:
                ids = {id(e) for e in entries}
                self._committing = [e for e in self._committing if id(e) not in ids]
                if written:
                    self._written(entries)
        return written


def _points(entries: Sequence[Entry]) -> int:
    return sum(len(entry.points) for entry in entries)


def write_with_retry(
    fn: Callable[[], None], *, policy: RetryPolicy, stop: threading.Event, what: str, run: str
) -> None:
    """Store writes retried with exponential backoff, bounded by `policy`. A stopping run does not wait for the
    store (`stop` set): its uncommitted files are simply redone next time. Re-raises the last error."""
    retrying = Retrying(
        stop=stop_any(
            stop_after_attempt(policy.attempts), stop_after_delay(policy.max_delay), stop_when_event_set(stop)
        ),
        wait=wait_exponential(multiplier=policy.wait_initial, max=policy.wait_max),
        reraise=True,
        before_sleep=lambda s: logger.warning(
            "ingest %s: store %s failed (attempt %d of %d), retrying: %s",
            run,
            what,
            s.attempt_number,
            policy.attempts,
            s.outcome.exception() if s.outcome else None,
        ),
    )
    retrying(fn)
