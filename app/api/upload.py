"""The upload path, written once: every route that sends images to the engine (search, batch search, analyze,
index, the page's form) and every WebSocket frame go through `engine_call` (admit, then the work in the thread
pool under REQUEST_TIMEOUT, the ticket cancelled when the client leaves); HTTP routes through `handle_uploads`,
which reads the uploads first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from app.engine import Ticket
from app.errors import ImageTooLarge, InvalidRequest, OceanoError, RequestTimeout
from app.service import FaceServiceApi

T = TypeVar("T")

DISCONNECT_POLL = 0.25  # seconds between checks that the client is still there


class ClientGone(Exception):
    """The client closed the connection before its answer was ready (nothing to answer)."""


Answered = tuple[type[Exception], ...]
ANSWERED: Answered = (OceanoError,)  # errors that are answers, not bugs (the WebSocket adds its protocol errors)


async def in_thread(fn: Callable[..., T], *args: Any, answered: Answered = ANSWERED) -> T:
    """`fn(*args)` in the thread pool. A domain or protocol error (`answered`: an expected answer, not a bug) comes
    back without the traceback of its thread: that traceback holds the frames that held the message and the frame
    (megabytes), in a reference cycle with the pool's future, so they would stay in memory until the garbage
    collector's next full pass, which an idle service may not run for a long time (measured: 64 sockets x 2
    messages of 4 MB that were no image left 1.3 GB behind)."""
    try:
        return await run_in_threadpool(fn, *args)
    except answered as exc:
        raise exc.with_traceback(None) from None


@dataclass(frozen=True, slots=True)
class Timed(Generic[T]):
    """An answer and the seconds it took, from before the upload was read to the end of the work."""

    value: T
    seconds: float

    @property
    def took_ms(self) -> float:
        return round(self.seconds * 1e3, 2)


async def run_in_thread(
    fn: Callable[[], T],
    *,
    timeout: float,
    ticket: Ticket | None = None,
    gone: Callable[[], Awaitable[bool]] | None = None,
    what: str = "request",
    answered: Answered = ANSWERED,
) -> T:
    """`fn` in the thread pool, bounded by `timeout` (REQUEST_TIMEOUT): the event loop never waits on decode or
    ONNX. `gone` is polled meanwhile (the HTTP client left: ClientGone). On a timeout, a client gone or this
    coroutine cancelled (a WebSocket closed) the ticket is cancelled: the batcher drops the request before
    inference. The ticket is released in every case."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    task = asyncio.ensure_future(in_thread(fn, answered=answered))
    # Work given up below finishes alone in its thread: its outcome is read here, not logged by asyncio as
    # "Task exception was never retrieved" (hundreds of tracebacks in a soak).
    task.add_done_callback(lambda done: None if done.cancelled() else done.exception())
    try:
        while True:
            poll = max(0.0, deadline - loop.time())
            if gone is not None:
                poll = min(DISCONNECT_POLL, poll)
            await asyncio.wait({task}, timeout=poll)  # no `done` set kept: it would hold the task in this frame
            if task.done():
                try:
                    return task.result()
                except answered as exc:
                    raise exc.with_traceback(None) from None  # see in_thread: this frame holds the task
            if loop.time() >= deadline:
                if ticket is not None:
                    ticket.cancel()
                raise RequestTimeout(f"{what} took longer than REQUEST_TIMEOUT={timeout:g}s")
            if gone is not None and await gone():
                if ticket is not None:
                    ticket.cancel()
                raise ClientGone()
    except asyncio.CancelledError:
        if ticket is not None:
            ticket.cancel()
        raise
    finally:
        if ticket is not None:
            ticket.release()
        del task


async def admitted(service: FaceServiceApi, images: int) -> Ticket | None:
    """`service.admit` off the event loop, for a service whose admit waits on another process (an HTTP worker's
    call to the core: measured on the loop at 50 clients, 2 ms on average, 8 ms at p95, 40 % of a worker's loop
    time blocked). A place taken after this coroutine was cancelled (the client left meanwhile) is given back."""
    pending = asyncio.get_running_loop().run_in_executor(None, service.admit, images)
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        pending.add_done_callback(_give_back)
        raise
    except OceanoError as exc:
        raise exc.with_traceback(None) from None  # see in_thread


def _give_back(done: asyncio.Future[Ticket | None]) -> None:
    if not done.cancelled() and done.exception() is None and (ticket := done.result()) is not None:
        ticket.release()


async def engine_call(
    service: FaceServiceApi,
    images: int,
    work: Callable[[Ticket | None], T],
    *,
    timeout: float,
    gone: Callable[[], Awaitable[bool]] | None = None,
    what: str = "request",
    answered: Answered = ANSWERED,
) -> T:
    """A place in line for `images` images (EngineBusy at once when the engine is too busy: before anything is
    decoded), then `work(ticket)` in the thread pool (see run_in_thread)."""
    ticket = await admitted(service, images) if service.admit_waits else service.admit(images)
    return await run_in_thread(
        lambda: work(ticket), timeout=timeout, ticket=ticket, gone=gone, what=what, answered=answered
    )


async def read_upload(file: UploadFile | None, max_bytes: int) -> bytes:
    if file is None:
        raise InvalidRequest("multipart field 'file' is required (an image upload)")
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"upload is over the {max_bytes / 2**20:.0f} MB limit (MAX_UPLOAD_MB)")
    return data


async def handle_uploads(
    request: Request,
    service: FaceServiceApi,
    files: Sequence[UploadFile | None],
    work: Callable[[list[bytes], Ticket | None], T],
    *,
    whole_request_pixels: bool = False,
) -> Timed[T]:
    """Read the uploads (MAX_UPLOAD_MB each), then `work(uploads, ticket)` through engine_call, timed.
    `whole_request_pixels`: the images' pixels together are checked from their headers first
    (MAX_REQUEST_MEGAPIXELS: 413 for the whole request before anything is decoded)."""
    started = time.perf_counter()
    max_bytes = service.settings.max_upload_bytes
    uploads = [await read_upload(f, max_bytes) for f in files]
    if whole_request_pixels:
        service.check_request_pixels(uploads)
    value = await engine_call(
        service,
        len(uploads),
        lambda ticket: work(uploads, ticket),
        timeout=service.settings.request_timeout,
        gone=request.is_disconnected,
    )
    return Timed(value, time.perf_counter() - started)


async def run_blocking(request: Request, fn: Callable[[], T]) -> T:
    """Blocking work that is not an upload (store reads and deletes, thumbnails) in the thread pool, bounded by
    REQUEST_TIMEOUT and given up when the client leaves."""
    return await run_in_thread(fn, timeout=request.app.state.settings.request_timeout, gone=request.is_disconnected)
