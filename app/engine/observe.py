"""What the engine tells whoever watches it: plain calls, no metrics library. The HTTP layer installs an observer
that turns them into Prometheus metrics (app.api.metrics); the default one does nothing."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class CallSource(StrEnum):
    """Who asked for an engine call."""

    REQUESTS = "requests"  # HTTP requests, through the request batcher (or straight to the engine without one)
    INGEST = "ingest"  # bulk ingest batches
    OTHER = "other"  # benchmarks, tools


class Shed(StrEnum):
    """Where a request was refused because the engine had too much work ahead."""

    DOOR = "door"  # before its body was read (app.api.admission)
    ADMIT = "admit"  # when its handler asked for a ticket, before decoding


class Dropped(StrEnum):
    """Why a queued request was dropped before inference."""

    DEADLINE = "deadline"  # it waited past GPU_ACQUIRE_TIMEOUT
    CLIENT_GONE = "client_gone"  # its client left, or REQUEST_TIMEOUT passed (its ticket was cancelled)


class EngineObserver(Protocol):
    """Called from inference threads: implementations must be thread-safe and cheap."""

    def model_batch(self, model: str, source: CallSource, size: int, seconds: float) -> None:
        """One run of one model: `size` images (detector) or faces (recognizer, heads)."""

    def waited(self, source: CallSource, seconds: float) -> None:
        """Seconds one caller waited for its engine call to start (queue and inference slot)."""

    def shed(self, where: Shed) -> None: ...

    def dropped(self, reason: Dropped) -> None: ...


class NullObserver:
    def model_batch(self, model: str, source: CallSource, size: int, seconds: float) -> None:
        pass

    def waited(self, source: CallSource, seconds: float) -> None:
        pass

    def shed(self, where: Shed) -> None:
        pass

    def dropped(self, reason: Dropped) -> None:
        pass
