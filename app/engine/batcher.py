"""Coalesce concurrent requests into shared engine batches, with admission control in front.

Each request thread hands its images to the batcher and waits. A dispatcher thread per inference slot takes
everything queued at that moment (up to `max_images`) and runs it as one `FaceEngine.analyze_batch` call, so
under load N concurrent searches cost one detector batch and one recognizer batch instead of N of each. Nothing
waits for company: an idle service answers a lone request at once.

Admission: the batcher knows the work ahead (images admitted but not yet decoded, queued, running) and the
measured engine time per image, so it can tell a new request how long it would wait. A request is admitted
(`admit`, before its upload is decoded) only when that wait fits in GPU_ACQUIRE_TIMEOUT; otherwise it gets
EngineBusy at once, with a Retry-After from the estimate. Queued requests whose deadline passed, or whose
client left (`Ticket.cancel`), are dropped before they reach the engine. So overload is a fast 503, never a
growing queue.

The estimate must survive a cold or slow engine: one call at a new input shape costs seconds on a GPU (cuDNN's
algorithm search), and an average that took it in would refuse nearly everything, so that nothing would run to
correct it. So a call that looks cold (a batch size never seen, many times slower than the estimate) is left
out, any one batch can raise the estimate by a bounded step only, fast batches pull it down quickly, and a
request that finds nothing ahead of it is always let in.
"""

from __future__ import annotations

import ctypes
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from app.engine.engine import FaceEngine, Image
from app.engine.observe import CallSource, Dropped, Shed
from app.errors import EngineBusy, RequestTimeout, ShuttingDown
from app.faces import Face, FaceHead

logger = logging.getLogger(__name__)

# Engine seconds per image before anything was measured (a CPU's order of magnitude); measured from then on.
INITIAL_SECONDS_PER_IMAGE = 0.05
# Weights of the newest batch in the moving average of seconds per image: a slower batch moves it up gently, a
# faster one down quickly (an estimate too high refuses work that would have fitted, and recovers only by the
# batches it still lets in).
RISE_WEIGHT = 0.2
FALL_WEIGHT = 0.5
# One batch counts as at most this many times the estimate: a slow outlier raises it by RISE_WEIGHT * (MAX_RISE - 1)
# (20 %) at most, while an engine slow for good doubles it in four batches.
MAX_RISE = 2.0
# A call at a batch size never seen before that is this many times slower than the estimate is taken for a cold
# call (a first run at a new input shape: cuDNN's search on a GPU, 1-3 s) and left out of the estimate.
COLD_FACTOR = 4.0
# Requests are let in at the door while the estimated wait is under this share of GPU_ACQUIRE_TIMEOUT: the
# estimate is an average, and one let in at the edge would often pass its deadline in the queue and get a late
# 503. Measured at 200 clients (bench/overload.py): with the whole timeout 503 p95 835 ms and 200 p95 3.2 s; with
# 3/4 647 ms and 2.8 s; with 1/2 357 ms and 2.5 s, the 200-throughput still 0.86x that at 50 clients.
ADMIT_SHARE = 0.5
# The operating system's name of each dispatcher thread ("batcher-0", ...; /proc/PID/task/TID/comm on Linux): its CPU
# time is the serial work that bounds a GPU machine's searches/s, and benchmarks read it there (bench.gpu).
DISPATCHER_OS_NAME = "batcher"
_PR_SET_NAME = 15  # prctl(2)


def name_os_thread(name: str) -> None:
    """Gives the calling thread `name` (15 bytes at most) where the operating system shows it: Linux's
    /proc/PID/task/TID/comm, top -H, py-spy. Elsewhere nothing (Python's thread names stay inside Python)."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: the name is a convenience
        logger.debug("cannot name OS thread %s", name)


def busy_error(wait: float, timeout: float) -> EngineBusy:
    """The 503 of a request that would wait `wait` seconds, over GPU_ACQUIRE_TIMEOUT (`timeout`)."""
    return EngineBusy(
        f"the inference engine is busy: about {wait:.1f}s of work is ahead, over the "
        f"{timeout:.1f}s a request may wait (GPU_ACQUIRE_TIMEOUT); retry shortly",
        retry_after=max(1.0, math.ceil(wait)),
    )


def refused_at_door(wait: float, timeout: float) -> bool:
    """Whether an upload is refused before its body is read, with `wait` seconds of work ahead."""
    return wait > timeout * ADMIT_SHARE


class Ticket:
    """A request's place in line, taken before its upload is decoded. Its images count as work ahead of later
    requests until they are submitted (then they are queued) or the ticket is released."""

    def __init__(self, batcher: InferenceBatcher, images: int) -> None:
        self._batcher = batcher
        self.images = images
        self.cancelled = threading.Event()  # the client left, or REQUEST_TIMEOUT passed
        self._reserved = True

    def cancel(self) -> None:
        self.cancelled.set()
        self.release()

    def release(self) -> None:
        """Give back the reservation (idempotent)."""
        if self._reserved:
            self._reserved = False
            self._batcher._unreserve(self.images)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# eq=False: requests are told apart by identity. Compared by fields, removing one from the queue compared
# numpy pixels, raised, and killed the dispatcher thread (found by bench/soak.py).
@dataclass(slots=True, eq=False)
class _Request:
    images: Sequence[Image]
    heads: tuple[FaceHead, ...]
    embed: bool
    deadline: float  # monotonic time after which the request has waited too long for the engine
    cancelled: threading.Event | None = None
    queued_at: float = field(default_factory=time.monotonic)
    future: Future[list[list[Face]]] = field(default_factory=Future)


class InferenceBatcher:
    def __init__(self, engine: FaceEngine, *, max_images: int = 32) -> None:
        self.engine = engine
        self.max_images = max_images
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._reserved = 0  # images admitted, not yet submitted
        self._queued = 0  # images in the queue
        self._running = 0  # images in engine calls now
        self.seconds_per_image = INITIAL_SECONDS_PER_IMAGE
        self.batches = 0  # engine calls made, for /metrics and tests
        self.requests = 0
        self.shed = 0  # requests refused at admission
        self.dropped = 0  # queued requests dropped: deadline passed or client gone
        self.cold_calls = 0  # engine calls left out of the estimate as cold (first run of a batch size)
        self._sizes_seen: set[int] = set()  # batch sizes (images per engine call) measured so far
        self._threads = [
            threading.Thread(
                target=self._run, args=(f"{DISPATCHER_OS_NAME}-{i}",), name=f"inference-batcher-{i}", daemon=True
            )
            for i in range(engine.gate.concurrency)
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ admission
    def estimated_wait(self) -> float:
        """Seconds a request arriving now would wait before its engine call starts."""
        ahead = self._reserved + self._queued + self._running
        return ahead * self.seconds_per_image / self.engine.gate.concurrency

    def busy_error(self, wait: float) -> EngineBusy:
        return busy_error(wait, self.engine.gate.timeout)

    def refusal_at_door(self) -> EngineBusy | None:
        """The EngineBusy a request arriving now gets before its body is read (counted as shed), or None when
        the work ahead fits in GPU_ACQUIRE_TIMEOUT, or nothing waits for the engine but the call it runs."""
        wait = self.door_wait()
        if not refused_at_door(wait, self.engine.gate.timeout):
            return None
        self.count_shed_at_door()
        return self.busy_error(wait)

    def door_wait(self) -> float:
        """The wait the door judges by (also what the core shares with its HTTP workers): the estimate, or 0 when
        nothing waits for the engine but the call it runs."""
        return 0.0 if self._nothing_waiting() else self.estimated_wait()

    def count_shed_at_door(self) -> None:
        """One upload refused at the door: here, or by an HTTP worker from the core's shared estimate."""
        self.shed += 1
        self.engine.observer.shed(Shed.DOOR)

    def admit(self, images: int) -> Ticket:
        """A place in line for `images` images, or EngineBusy at once when the wait would exceed
        GPU_ACQUIRE_TIMEOUT (before the caller spends anything on decoding)."""
        with self._cond:
            if self._closed:
                raise ShuttingDown("the service is shutting down; retry once it is back")
            wait = self.estimated_wait()
            # The whole timeout here: a request let in at the door (ADMIT_SHARE) is not refused after its body
            # was read unless the work ahead grew past the timeout meanwhile.
            if wait > self.engine.gate.timeout and not self._nothing_waiting():
                self.shed += 1
                self.engine.observer.shed(Shed.ADMIT)
                raise self.busy_error(wait)
            self._reserved += images
        return Ticket(self, images)

    def _nothing_waiting(self) -> bool:
        """No request queued or admitted ahead: a newcomer is next, whatever the estimate says. However wrong the
        estimate, the engine is then never left without work, and each call it runs corrects the estimate."""
        return self._queued == 0 and self._reserved == 0

    def _unreserve(self, images: int) -> None:
        with self._cond:
            self._reserved -= images

    # ------------------------------------------------------------------ requests
    def analyze(
        self,
        images: Sequence[Image],
        *,
        heads: Sequence[FaceHead] = (),
        timeout: float | None = None,
        ticket: Ticket | None = None,
        embed: bool = True,
    ) -> list[list[Face]]:
        """Same contract as FaceEngine.analyze_batch: EngineBusy when the engine does not take the request
        within the gate's timeout (GPU_ACQUIRE_TIMEOUT). With a ticket, its reservation becomes this request.
        Requests are batched with others that run the same heads and want embeddings alike (`embed`)."""
        wait = self.engine.gate.timeout if timeout is None else timeout
        cancelled = ticket.cancelled if ticket is not None else None
        if cancelled is not None and cancelled.is_set():  # given up while its upload was decoded
            with self._cond:
                self.dropped += 1
            self.engine.observer.dropped(Dropped.CLIENT_GONE)
            raise RequestTimeout("the request was given up (client gone or REQUEST_TIMEOUT) before inference")
        request = _Request(
            images=images, heads=tuple(heads), embed=embed, deadline=time.monotonic() + wait, cancelled=cancelled
        )
        with self._cond:
            if self._closed:
                raise ShuttingDown("the service is shutting down; retry once it is back")
            if ticket is not None:
                ticket.release()  # its images are counted as queued from now on (the lock is re-entrant)
            self._queue.append(request)
            self._queued += len(images)
            self._cond.notify()
        try:
            return request.future.result(timeout=max(0.0, request.deadline - time.monotonic()))
        except FutureTimeout:
            with self._cond:
                if self._forget(request):  # still queued at its deadline: 503 now, not after the batch running
                    self.dropped += 1
                    self.engine.observer.dropped(Dropped.DEADLINE)
                    raise self.busy_error(self.estimated_wait()) from None
        return request.future.result()  # a dispatcher took it: its answer comes with that engine call

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _wait_for_work(self) -> _Request | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            return self._queue[0] if self._queue else None

    def _forget(self, request: _Request) -> bool:
        """Take a request out of the queue if it is still there; call holding the lock."""
        for i, queued in enumerate(self._queue):
            if queued is request:
                del self._queue[i]
                self._queued -= len(request.images)
                return True
        return False

    def _drop_dead(self) -> None:
        """Fail the queued requests whose deadline passed or whose client left; call holding the lock."""
        now = time.monotonic()
        dead = [r for r in self._queue if r.deadline <= now or (r.cancelled is not None and r.cancelled.is_set())]
        for r in dead:
            self._forget(r)
            self.dropped += 1
            if r.cancelled is not None and r.cancelled.is_set():
                self.engine.observer.dropped(Dropped.CLIENT_GONE)
                r.future.set_exception(RequestTimeout("the request was given up before inference"))
            else:
                self.engine.observer.dropped(Dropped.DEADLINE)
                r.future.set_exception(self.busy_error(self.estimated_wait()))

    def _take(self) -> list[_Request]:
        """Everything live queued now that shares the oldest request's heads and `embed`, up to max_images."""
        with self._cond:
            self._drop_dead()
            if not self._queue:
                return []
            taken = [self._queue.popleft()]
            count = len(taken[0].images)
            while (
                self._queue
                and count + len(self._queue[0].images) <= self.max_images
                and self._queue[0].heads == taken[0].heads
                and self._queue[0].embed == taken[0].embed
            ):
                request = self._queue.popleft()
                taken.append(request)
                count += len(request.images)
            self._queued -= count
            self._running += count
            return taken

    def _run(self, os_name: str) -> None:
        name_os_thread(os_name)
        while (oldest := self._wait_for_work()) is not None:
            taken: list[_Request] = []
            try:
                self._serve(oldest, taken)
            except Exception as exc:  # this thread must outlive anything: without it no request is ever served
                logger.exception("inference dispatcher: unexpected error; failing its requests and serving on")
                for r in taken:
                    if not r.future.done():
                        r.future.set_exception(exc)

    def _serve(self, oldest: _Request, taken: list[_Request]) -> None:
        """One engine call for what is queued now. Take the slot first and the requests after: whatever queued
        while the engine was busy then goes into this one call. `taken` gets the requests this call answers."""
        gate = self.engine.gate
        try:
            with gate.acquire(max(0.0, oldest.deadline - time.monotonic())):
                taken.extend(self._take())
                if not taken:
                    return
                images = [img for r in taken for img in r.images]
                now = time.monotonic()
                for r in taken:
                    self.engine.observer.waited(CallSource.REQUESTS, now - r.queued_at)
                started = time.perf_counter()
                try:
                    faces = self.engine.analyze_holding_gate(
                        images, heads=taken[0].heads, embed=taken[0].embed, source=CallSource.REQUESTS
                    )
                except BaseException as exc:  # handed to every waiting request, never lost in this thread
                    for r in taken:
                        r.future.set_exception(exc)
                    return
                finally:
                    with self._cond:
                        self._running -= len(images)
                self._measured(time.perf_counter() - started, len(images))
        except EngineBusy:
            with self._cond:
                self._drop_dead()
            return
        self.batches += 1
        self.requests += len(taken)
        start = 0
        for r in taken:
            r.future.set_result(faces[start : start + len(r.images)])
            start += len(r.images)

    def _measured(self, seconds: float, images: int) -> None:
        """Take one engine call into the estimate of seconds per image, unless it looks cold."""
        per_image = seconds / max(1, images)
        estimate = self.seconds_per_image
        first_of_size = images not in self._sizes_seen
        self._sizes_seen.add(images)
        if first_of_size and per_image > COLD_FACTOR * estimate:
            self.cold_calls += 1
            logger.info(
                "engine call of %d images took %.2fs (%.0fx the estimate), first at this size: left out of the "
                "admission estimate as cold",
                images,
                seconds,
                per_image / estimate,
            )
            return
        if per_image > estimate:
            self.seconds_per_image += RISE_WEIGHT * (min(per_image, MAX_RISE * estimate) - estimate)
        else:
            self.seconds_per_image += FALL_WEIGHT * (per_image - estimate)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)
