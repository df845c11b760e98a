"""app.api.upload.engine_call: where a service's admit waits on another process (an HTTP worker's call to the
core), it runs off the event loop, and a place in line taken after the request was given up is given back.

The service here is a stand-in whose admit blocks until the test lets it go (a stand-in for a busy core process,
which the workers test runs for real); what is checked is behaviour: the loop's other work goes on meanwhile,
errors arrive as they are, the ticket is released."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from app.api.upload import engine_call
from app.errors import EngineBusy

DEADLINE_S = 30.0


class HeldTicket:
    def __init__(self) -> None:
        self.released = 0
        self.cancelled = threading.Event()

    def release(self) -> None:
        self.released += 1

    def cancel(self) -> None:
        self.cancelled.set()
        self.release()


class SlowAdmitService:
    """admit() blocks until `go` is set, then answers `ticket` (or raises `error`)."""

    def __init__(self, *, waits: bool, error: Exception | None = None) -> None:
        self.admit_waits = waits
        self.go = threading.Event()
        self.asked = threading.Event()
        self.ticket = HeldTicket()
        self.error = error
        self.threads: list[str] = []

    def admit(self, images: int) -> Any:
        self.threads.append(threading.current_thread().name)
        self.asked.set()
        assert self.go.wait(DEADLINE_S)
        if self.error is not None:
            raise self.error
        return self.ticket


async def wait_for(event: threading.Event) -> None:
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, event.wait, DEADLINE_S)


def test_a_waiting_admit_leaves_the_event_loop_free() -> None:
    service = SlowAdmitService(waits=True)

    async def scenario() -> tuple[str, int]:
        call = asyncio.ensure_future(engine_call(service, 1, lambda ticket: "done", timeout=DEADLINE_S))  # type: ignore[arg-type]
        await wait_for(service.asked)
        ticks = 0
        for _ in range(20):  # the loop runs other work while admit waits in its thread
            await asyncio.sleep(0)
            ticks += 1
        service.go.set()
        return await asyncio.wait_for(call, DEADLINE_S), ticks

    answer, ticks = asyncio.run(scenario())
    assert answer == "done" and ticks == 20
    assert service.threads and service.threads[0] != threading.main_thread().name
    assert service.ticket.released == 1  # released once the work ended, as before


def test_an_admit_that_does_not_wait_stays_on_the_loop() -> None:
    service = SlowAdmitService(waits=False)
    service.go.set()
    assert asyncio.run(engine_call(service, 1, lambda ticket: "done", timeout=DEADLINE_S)) == "done"  # type: ignore[arg-type]
    assert service.threads == [threading.main_thread().name]


def test_a_place_taken_after_the_request_was_given_up_is_given_back() -> None:
    service = SlowAdmitService(waits=True)
    ran: list[object] = []

    async def scenario() -> None:
        call = asyncio.ensure_future(engine_call(service, 1, ran.append, timeout=DEADLINE_S))  # type: ignore[arg-type]
        await wait_for(service.asked)
        call.cancel()  # the client left while admit waited on the core
        with pytest.raises(asyncio.CancelledError):
            await call
        service.go.set()
        for _ in range(int(DEADLINE_S / 0.01)):
            if service.ticket.released:
                return
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert service.ticket.released == 1 and ran == []  # given back, and the work never ran


def test_a_refusal_from_a_waiting_admit_is_raised_as_it_is() -> None:
    service = SlowAdmitService(waits=True, error=EngineBusy("busy", retry_after=3))
    service.go.set()
    with pytest.raises(EngineBusy) as raised:
        asyncio.run(engine_call(service, 1, lambda ticket: "done", timeout=DEADLINE_S))  # type: ignore[arg-type]
    assert raised.value.retry_after == 3 and raised.value.__traceback__ is not None
