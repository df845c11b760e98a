"""Large arrays (decoded pixels) from an HTTP worker to the core through shared memory, not through the socket.

Why: a 640 px photo is 0.9 MB of pixels. Pickled, written to the socket, read back, joined and unpickled, it cost
the receiving process 0.71 ms of CPU per call (python -m bench.pixels), about a quarter of the core's CPU per
search (python -m bench.workers --layout gpu), and the core's CPU is what bounds a GPU machine's searches/s.

Each connection has a buffer: an anonymous memfd the worker maps and hands to the core once, over the socket
itself (SCM_RIGHTS), so there is no name to leak when a process dies; the memory goes with the last mapping. A
call's arrays of at least SHARED_MIN_BYTES are written there by the worker's pickler (persistent ids) and read in
place by the core's; everything else is pickled as before. A connection carries one call at a time and the
worker writes again only after the core answered, so the core reads the buffer while nothing writes it. (A
request that timed out in the core while the engine still ran it may see its pixels overwritten by the next
call: its result is thrown away.) A buffer grows to the largest call and is given up after a call that made it
larger than SHARED_KEEP_BYTES, so that idle connections do not hold large requests' memory: a worker keeps at
most SHARED_KEEP_BYTES per connection, and has one connection per call in flight (bounded by its threads: the
request thread pool's 40 and the few that run admit).
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

SHARED_MIN_BYTES = 64 * 1024  # smaller arrays travel in the message: a copy costs less than a lookup
SHARED_KEEP_BYTES = 8 * 2**20  # a buffer larger than this is given up after its call
# Anonymous shared memory (Linux, the service's platform); elsewhere arrays are pickled into the message as before.
SHARED_MEMORY = hasattr(os, "memfd_create")
_FIRST_BYTES = 4 * 2**20
_ALIGN = 64


@dataclass(frozen=True, slots=True)
class _NewBuffer:
    """Control message: the next thing on the socket is the fd of the connection's new buffer, of `size` bytes."""

    size: int


class _Grow(Exception):
    def __init__(self, needed: int) -> None:
        self.needed = needed


class _SharingPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, buffer: mmap.mmap | None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._buffer = buffer
        self.used = 0

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is not np.ndarray or obj.nbytes < SHARED_MIN_BYTES or obj.dtype.hasobject:
            return None
        offset = self.used
        end = offset + obj.nbytes
        if self._buffer is None or end > len(self._buffer):
            raise _Grow(end)
        np.ndarray(obj.shape, obj.dtype, buffer=self._buffer, offset=offset)[...] = obj
        self.used = -(-end // _ALIGN) * _ALIGN
        return ("shared", offset, obj.shape, obj.dtype.str)


class _SharedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffer: mmap.mmap | None) -> None:
        super().__init__(file)
        self._buffer = buffer

    def persistent_load(self, pid: Any) -> Any:
        kind, offset, shape, dtype = pid
        if kind != "shared" or self._buffer is None:
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r} (or no shared buffer)")
        return np.ndarray(shape, np.dtype(dtype), buffer=self._buffer, offset=offset)


class PixelSender:
    """The worker's end of one connection: send() pickles a message with its large arrays in the buffer."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._buffer: mmap.mmap | None = None

    @property
    def buffer_bytes(self) -> int:
        return 0 if self._buffer is None else len(self._buffer)

    def send(self, message: Any) -> None:
        if not SHARED_MEMORY:
            self.connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            return
        while True:
            data = io.BytesIO()
            pickler = _SharingPickler(data, self._buffer)
            try:
                pickler.dump(message)
                break
            except _Grow as grow:
                self._new_buffer(max(grow.needed * 2, self.buffer_bytes * 2, _FIRST_BYTES))
        self.connection.send_bytes(data.getbuffer())

    def answered(self) -> None:
        """The call's answer came: the buffer is free; given up when it grew over SHARED_KEEP_BYTES."""
        if self._buffer is not None and len(self._buffer) > SHARED_KEEP_BYTES:
            self._buffer.close()
            self._buffer = None

    def _new_buffer(self, size: int) -> None:
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create("oceano-pixels", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            buffer = mmap.mmap(fd, size)
            self.connection.send(_NewBuffer(size))
            reduction.send_handle(self.connection, fd, 0)  # the pid is for Windows only
        finally:
            os.close(fd)
        if self._buffer is not None:
            self._buffer.close()
        self._buffer = buffer


class PixelReceiver:
    """The core's end of one connection: recv() reads a message whose large arrays are views of the buffer,
    valid until the caller answers (the worker writes the buffer again only after that)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._buffer: mmap.mmap | None = None

    def recv(self) -> Any:
        while True:
            message = _SharedUnpickler(io.BytesIO(self.connection.recv_bytes()), self._buffer).load()
            if not isinstance(message, _NewBuffer):
                return message
            fd = reduction.recv_handle(self.connection)
            try:
                # The old buffer is dropped, not closed: arrays of an earlier call may still refer to it.
                self._buffer = mmap.mmap(fd, message.size)
            finally:
                os.close(fd)

    def answered(self) -> None:
        """The answer left: a buffer grown over SHARED_KEEP_BYTES is given up here too (its memory goes with the
        last mapping; arrays still referring to it keep it until they go)."""
        if self._buffer is not None and len(self._buffer) > SHARED_KEEP_BYTES:
            self._buffer = None
