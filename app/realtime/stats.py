"""Live statistics of the real-time socket, kept on app.state.realtime_stats and served by GET /api/stats.

RealtimeStats is a plain object of counters so that any exporter can read them as attributes: /metrics is to
publish the same series from here (counters: total_*, rejected_connections, processing_seconds; gauges:
active_connections; the latest processing times in `recent`). Only the event loop writes them (the WebSocket
handler), so no lock."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WINDOW = 1000  # the latest processing times kept for the p95


@dataclass
class RealtimeStats:
    active_connections: int = 0  # served now (MAX_CONCURRENT_CONNECTIONS at most)
    authenticating: int = 0  # waiting for their first message's key (WS_AUTH_PENDING at most), not served yet
    total_connections: int = 0  # accepted since start
    rejected_connections: int = 0  # turned away at MAX_CONCURRENT_CONNECTIONS, or waiting for a key when all
    # WS_AUTH_PENDING places were taken and a newer socket took theirs
    total_frames_received: int = 0  # frames and predict commands received
    total_frames_processed: int = 0  # answered with a result (detection_result or prediction)
    total_frames_dropped: int = 0  # replaced by a newer frame of the same connection before processing
    total_frames_failed: int = 0  # taken for processing, answered with an error (bad image, busy, timeout, ...)
    total_predictions: int = 0  # of total_frames_processed: predict commands
    total_alerts: int = 0  # alerts sent (after the cool-down)
    processing_seconds: float = 0.0  # sum over the processed frames
    started: float = field(default_factory=time.monotonic)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # seconds, latest frames

    def observe(self, seconds: float, *, prediction: bool = False) -> None:
        self.total_frames_processed += 1
        self.total_predictions += prediction
        self.processing_seconds += seconds
        self.recent.append(seconds)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started

    @property
    def average_processing_time(self) -> float:
        """Milliseconds per processed frame, since start."""
        return 1e3 * self.processing_seconds / self.total_frames_processed if self.total_frames_processed else 0.0

    @property
    def p95_processing_time(self) -> float:
        """Milliseconds, over the latest WINDOW processed frames."""
        return float(np.percentile(np.asarray(self.recent), 95)) * 1e3 if self.recent else 0.0

    def snapshot(self) -> dict[str, Any]:
        """The crowd backend's keys first (times in milliseconds, uptime in seconds), then ours."""
        return {
            "active_connections": self.active_connections,
            "total_frames_processed": self.total_frames_processed,
            "total_frames_dropped": self.total_frames_dropped,
            "average_processing_time": round(self.average_processing_time, 2),
            "p95_processing_time": round(self.p95_processing_time, 2),
            "uptime": round(self.uptime, 1),
            "total_connections": self.total_connections,
            "rejected_connections": self.rejected_connections,
            "total_frames_received": self.total_frames_received,
            "total_frames_failed": self.total_frames_failed,
            "total_predictions": self.total_predictions,
            "total_alerts": self.total_alerts,
        }
