"""Freed heap handed back to the system after WebSocket sockets close (glibc's malloc_trim; nothing elsewhere).

Why: a socket's messages (up to WS_MAX_MESSAGE_BYTES each, parsed and decoded in the thread pool) are freed when it
closes, but glibc keeps much of that memory in its arenas: 16 sockets x 2 messages of 1 MB left the service ~95 MB
above its level for good (tests/api/test_ws_limits.py). A fixed M_MMAP_THRESHOLD returned it too, but cut the
stream's frames/s 4-5x (bench.stream), so the heap is trimmed after closes instead: once, a moment after the last.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

TRIM_DELAY = 0.5  # seconds after a close; closes meanwhile share the one trim


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapTrimmer:
    """`soon()` from the event loop: one malloc_trim(0) in a thread TRIM_DELAY later, however many ask meanwhile."""

    def __init__(self, delay: float = TRIM_DELAY, trim: Callable[[int], int] | None = None) -> None:
        self.delay = delay
        self._trim = trim if trim is not None else _malloc_trim()
        self._pending = False
        self.trims = 0

    def soon(self) -> None:
        if self._trim is None or self._pending:
            return
        self._pending = True
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, lambda: loop.create_task(self._run()))

    async def _run(self) -> None:
        self._pending = False
        trim = self._trim
        if trim is not None:
            await asyncio.to_thread(trim, 0)  # it walks every arena: not on the event loop
            self.trims += 1


# The heap is the process's: one trimmer for every socket of it.
heap_trimmer = HeapTrimmer()
