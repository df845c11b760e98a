"""Coalesce concurrent requests into shared engine batches.

Each request thread hands its images to the batcher and waits. A dispatcher thread per inference slot takes
everything queued at that moment (up to `max_images`) and runs it as one `FaceEngine.analyze_batch` call, so
under load N concurrent searches cost one detector batch and one recognizer batch instead of N of each, and no
request waits longer than one batch for its turn. Nothing waits for company: an idle service answers a lone
request at once (batching only what is already queued adds no latency).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from app.engine.engine import FaceEngine, Image
from app.errors import EngineBusy, ShuttingDown
from app.faces import Face, FaceHead

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    images: Sequence[Image]
    heads: tuple[FaceHead, ...]
    deadline: float  # monotonic time after which the request has waited too long for a slot
    future: Future[list[list[Face]]] = field(default_factory=Future)


class InferenceBatcher:
    def __init__(self, engine: FaceEngine, *, max_images: int = 32) -> None:
        self.engine = engine
        self.max_images = max_images
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # engine calls made, for /metrics and tests
        self.requests = 0
        self._threads = [threading.Thread(target=self._run, name=f"inference-batcher-{i}", daemon=True)
                         for i in range(engine.gate.concurrency)]
        for t in self._threads:
            t.start()

    def analyze(self, images: Sequence[Image], *, heads: Sequence[FaceHead] = (),
                timeout: float | None = None) -> list[list[Face]]:
        """Same contract as FaceEngine.analyze_batch: EngineBusy when no slot frees up within the gate's
        timeout (GPU_ACQUIRE_TIMEOUT)."""
        wait = self.engine.gate.timeout if timeout is None else timeout
        request = _Request(images=images, heads=tuple(heads), deadline=time.monotonic() + wait)
        with self._cond:
            if self._closed:
                raise ShuttingDown("the service is shutting down; retry once it is back")
            self._queue.append(request)
            self._cond.notify()
        return request.future.result()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _wait_for_work(self) -> _Request | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            return self._queue[0] if self._queue else None

    def _take(self) -> list[_Request]:
        """Everything queued now that shares the oldest request's heads, up to max_images."""
        with self._cond:
            if not self._queue:
                return []
            taken = [self._queue.popleft()]
            count = len(taken[0].images)
            while self._queue and count + len(self._queue[0].images) <= self.max_images \
                    and self._queue[0].heads == taken[0].heads:
                request = self._queue.popleft()
                taken.append(request)
                count += len(request.images)
            return taken

    def _fail_expired(self) -> None:
        """Requests that waited longer than GPU_ACQUIRE_TIMEOUT get EngineBusy (503) instead of a late answer."""
        gate = self.engine.gate
        now = time.monotonic()
        with self._cond:
            expired = [r for r in self._queue if r.deadline <= now]
            for r in expired:
                self._queue.remove(r)
        for r in expired:
            r.future.set_exception(EngineBusy(
                f"the inference engine is busy (waited {gate.timeout:.1f}s for one of {gate.concurrency} "
                "slots); retry shortly", retry_after=max(1.0, gate.timeout)))

    def _run(self) -> None:
        gate = self.engine.gate
        while (oldest := self._wait_for_work()) is not None:
            # Take the slot first and the requests after: whatever queued while the engine was busy then
            # goes into this one call.
            try:
                with gate.acquire(max(0.0, oldest.deadline - time.monotonic())):
                    live = self._take()
                    if not live:
                        continue
                    images = [img for r in live for img in r.images]
                    try:
                        faces = self.engine.analyze_holding_gate(images, heads=live[0].heads)
                    except BaseException as exc:  # handed to every waiting request, never lost in this thread
                        for r in live:
                            r.future.set_exception(exc)
                        continue
            except EngineBusy:
                self._fail_expired()
                continue
            self.batches += 1
            self.requests += len(live)
            start = 0
            for r in live:
                r.future.set_result(faces[start:start + len(r.images)])
                start += len(r.images)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)
