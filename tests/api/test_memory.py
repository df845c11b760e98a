"""HeapTrimmer: one trim after a burst of socket closes, in a thread, and always one after the last close."""

from __future__ import annotations

import asyncio
import threading

from app.api.memory import HeapTrimmer, heap_trimmer


def test_closes_in_a_burst_share_one_trim_and_a_later_close_gets_its_own() -> None:
    calls: list[tuple[int, str]] = []

    def trim(pad: int) -> int:
        calls.append((pad, threading.current_thread().name))
        return 1

    async def scenario() -> None:
        trimmer = HeapTrimmer(delay=0.05, trim=trim)
        for _ in range(20):
            trimmer.soon()
        await asyncio.wait_for(until(lambda: trimmer.trims == 1), 10)
        trimmer.soon()  # a close after the trim: trimmed again
        await asyncio.wait_for(until(lambda: trimmer.trims == 2), 10)

    asyncio.run(scenario())
    assert len(calls) == 2 and all(pad == 0 for pad, _ in calls)
    assert all(name != threading.main_thread().name for _, name in calls)  # never on the event loop's thread


def test_the_process_trimmer_finds_malloc_trim_on_glibc() -> None:
    assert heap_trimmer._trim is not None  # these machines run glibc: without it the service keeps freed heap


async def until(condition) -> None:  # type: ignore[no-untyped-def]
    while not condition():
        await asyncio.sleep(0.01)
