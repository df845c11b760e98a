"""How ingest progress reads: one-line progress and summaries for logs, a tqdm bar on a terminal."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from app.ingest.model import Counts, JobStatus, Progress

logger = logging.getLogger(__name__)

LOG_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal


def progress_line(progress: Progress) -> str:
    c = progress.counts
    total = "?" if c.total is None else str(c.total)
    eta = "" if progress.eta_s is None else f", ETA {format_duration(progress.eta_s)}"
    return (
        f"{c.handled}/{total} files ({c.done} done, {c.in_progress} in progress, {c.skipped} skipped, "
        f"{c.failed} failed), {c.faces_added} faces added{quality_note(c)}, {progress.files_per_s:.1f} files/s, "
        f"{progress.faces_per_s:.1f} faces/s{eta}"
    )


def summary_line(progress: Progress) -> str:
    c = progress.counts
    return (
        f"{c.seen} files seen: {c.ingested} ingested, {c.skipped} skipped (already done), {c.no_face} without "
        f"faces, {c.failed} failed; {c.faces_added} faces added{quality_note(c)} in "
        f"{format_duration(progress.elapsed)} ({progress.files_per_s:.1f} images/s)"
    )


def quality_note(c: Counts) -> str:
    """' (3 flagged, 2 refused for quality)', or nothing when no face was either (QUALITY_MIN, QUALITY_POLICY)."""
    if not (c.faces_flagged or c.faces_refused):
        return ""
    return f" ({c.faces_flagged} flagged, {c.faces_refused} refused for quality)"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressRenderer:
    """A tqdm bar on a terminal; a plain log line every LOG_INTERVAL seconds otherwise (logs, docker exec -T)."""

    def __init__(self, *, tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._clock = clock
        self._bar: Any = None
        self._last_log = clock()

    def update(self, progress: Progress, status: JobStatus | None) -> None:
        c = progress.counts
        if self.tty:
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(
                    total=c.total,
                    unit="file",
                    dynamic_ncols=True,
                    file=sys.stderr,
                    desc="ingest",
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
                )
            if c.total is not None and self._bar.total != c.total:
                self._bar.total = c.total
            self._bar.n = c.handled
            eta = "?" if progress.eta_s is None else format_duration(progress.eta_s)
            self._bar.set_postfix_str(
                f"{progress.files_per_s:.1f} files/s, {progress.faces_per_s:.1f} faces/s, "
                f"ETA {eta}, {c.faces_added} faces, {c.failed} failed",
                refresh=True,
            )
        elif self._clock() - self._last_log >= LOG_INTERVAL:
            self._last_log = self._clock()
            prefix = f"[{status.value}] " if status is not None else ""
            logger.info("%s%s", prefix, progress_line(progress))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_summary(path: str, progress: Progress, outcome: str, message: str | None) -> str:
    c = progress.counts
    reasons = ", ".join(f"{r['reason']} ({r['count']})" for r in progress.top_reasons)
    images_per_s = c.done / progress.elapsed if progress.elapsed else 0.0
    lines = [
        f"ingest of {path} {outcome}" + (f": {message}" if message else ""),
        f"  files seen   {c.seen}",
        f"  ingested     {c.ingested}",
        f"  skipped      {c.skipped} (already done)",
        f"  no face      {c.no_face}",
        f"  failed       {c.failed}" + (f"; top reasons: {reasons}" if reasons else ""),
        f"  faces added  {c.faces_added}",
        f"  quality      {c.faces_flagged} flagged, {c.faces_refused} refused (under QUALITY_MIN)",
        f"  wall time    {format_duration(progress.elapsed)} ({progress.elapsed:.1f}s), {images_per_s:.2f} images/s",
    ]
    return "\n".join(lines)
