"""Counters behind GET /metrics (Prometheus text format)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Metrics:
    searches: int = 0
    search_faces: int = 0
    search_seconds: float = 0.0
    faces_indexed: int = 0
    errors: int = 0

    def observe_search(self, faces: int, seconds: float) -> None:
        self.searches += 1
        self.search_faces += faces
        self.search_seconds += seconds
