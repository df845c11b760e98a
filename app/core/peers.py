"""MAX_CLIENT_CONNECTIONS across the HTTP workers: one count of each peer's open connections, kept in a memory-mapped
table under STATE_DIR that every worker process changes under a file lock. The kernel hands a client's connections
to any worker, so counted in each worker alone a peer could hold WORKERS x the bound.

Each worker owns a column of the counts, claimed by its pid when it starts; a peer's count is its row's total. A
worker that dies leaves its column behind, and its connections died with it: the next worker to claim a column
takes a dead one and clears it. The lock is held for a lookup in numpy arrays (microseconds), once per connection
opened and once per connection closed, on the worker's event loop, and waited for LOCK_WAIT at most (_Lock)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Peers with connections open at once that the table holds. A new peer that finds it full is let in uncounted (and
# logged): a full table must not lock new clients out, and UVICORN_LIMIT_CONCURRENCY still bounds every worker.
SLOTS = 8192
COLUMNS = 160  # worker processes: WORKERS (64 at most), and room for the replacements of dead ones
LOCK_WAIT = 0.05  # seconds a worker waits for the table's lock (held for microseconds) before going on uncounted
LOCK_RETRY = 0.0005

_PIDS = np.dtype(np.int32).itemsize * COLUMNS
_KEYS = np.dtype(np.uint64).itemsize * SLOTS
_TOTALS = np.dtype(np.uint32).itemsize * SLOTS
_COUNTS = np.dtype(np.uint16).itemsize * SLOTS * COLUMNS
TABLE_BYTES = _PIDS + _KEYS + _TOTALS + _COUNTS


def _key(peer: str) -> int:
    """A peer address as a non-zero 64-bit key (0 marks a free slot)."""
    return int.from_bytes(hashlib.blake2b(peer.encode(), digest_size=8).digest(), "little") or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process took the pid: not one of ours, and not free either
        return True
    return True


class SharedPeerCounts:
    """The table of one service (`create` once, in the core, before the workers start; `claim` in each worker)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if create:
            with path.open("wb") as f:
                f.truncate(TABLE_BYTES)
            path.chmod(0o600)
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), TABLE_BYTES)
        offset = 0
        self._pids = np.frombuffer(self._map, np.int32, COLUMNS, offset)
        offset += _PIDS
        self._keys = np.frombuffer(self._map, np.uint64, SLOTS, offset)
        offset += _KEYS
        self._totals = np.frombuffer(self._map, np.uint32, SLOTS, offset)
        offset += _TOTALS
        self._counts = np.frombuffer(self._map, np.uint16, SLOTS * COLUMNS, offset).reshape(SLOTS, COLUMNS)
        self._column: int | None = None
        self._full_logged = False
        self._unreleased: list[int] = []  # keys whose release met the table locked: done at the next lock taken

    def _locked(self) -> _Lock:
        return _Lock(self._file.fileno())

    def claim(self) -> bool:
        """This process's column: a free one, or one whose worker died (its counts cleared). False when every
        column belongs to a live process (then this worker counts nothing: admit lets everyone in)."""
        pid = os.getpid()
        with self._locked() as lock:
            if not lock.held:
                logger.warning("MAX_CLIENT_CONNECTIONS: the shared table stayed locked; this worker counts nothing")
                return False
            for column, owner in enumerate(self._pids.tolist()):
                if owner == pid or owner == 0 or not _alive(owner):
                    if owner not in (0, pid):
                        held = self._counts[:, column].astype(np.uint32)
                        self._totals -= held
                        self._counts[:, column] = 0
                        self._keys[self._totals == 0] = 0
                    self._pids[column] = pid
                    self._column = column
                    return True
        logger.warning("MAX_CLIENT_CONNECTIONS: no free column in the shared table; this worker counts nothing")
        return False

    def admit(self, peer: str, limit: int) -> bool:
        """Counts one more connection of `peer` when it holds fewer than `limit` across the workers."""
        if self._column is None:
            return True
        key = _key(peer)
        with self._locked() as lock:
            if not lock.held:
                return True  # let in uncounted, as with a full table: never stall the event loop
            self._release_held()
            found = np.flatnonzero(self._keys == key)
            if found.size:
                slot = int(found[0])
                if self._totals[slot] >= limit:
                    return False
            else:
                free = np.flatnonzero(self._keys == 0)
                if not free.size:
                    if not self._full_logged:
                        self._full_logged = True
                        logger.warning("MAX_CLIENT_CONNECTIONS: %d peers hold connections; more go uncounted", SLOTS)
                    return True
                slot = int(free[0])
                self._keys[slot] = key
            self._totals[slot] += 1
            self._counts[slot, self._column] += 1
            return True

    def release(self, peer: str) -> None:
        """One connection of `peer` admitted by this worker closed."""
        if self._column is None:
            return
        with self._locked() as lock:
            self._unreleased.append(_key(peer))
            if lock.held:
                self._release_held()

    def _release_held(self) -> None:
        """The releases not yet done, under the lock."""
        column = self._column
        assert column is not None
        for key in self._unreleased:
            found = np.flatnonzero(self._keys == key)
            if not found.size:
                continue  # admitted uncounted (a full table, or the table stayed locked)
            slot = int(found[0])
            if self._counts[slot, column] == 0:
                continue
            self._counts[slot, column] -= 1
            self._totals[slot] -= 1
            if self._totals[slot] == 0:
                self._keys[slot] = 0
        self._unreleased.clear()

    def total(self, peer: str) -> int:
        """`peer`'s open connections across the workers (tests)."""
        found = np.flatnonzero(self._keys == _key(peer))
        return int(self._totals[found[0]]) if found.size else 0

    def close(self) -> None:
        del self._pids, self._keys, self._totals, self._counts  # the views first: mmap refuses to close under them
        self._map.close()
        self._file.close()


class _Lock:
    """flock on the table's file: exclusive between processes (each opened the file itself). Taken without
    blocking, retried for LOCK_WAIT at most: a worker stopped while holding it (SIGSTOP, a debugger) must not stall
    the other workers' event loops; past the wait the caller goes on uncounted (`held` False)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.held = False

    def __enter__(self) -> _Lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return self
                time.sleep(LOCK_RETRY)
                continue
            self.held = True
            return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.held = False
