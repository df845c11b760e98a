"""MAX_CLIENT_CONNECTIONS across the HTTP workers (app.core.peers): worker processes counting one peer's connections
in the shared table, as the HTTP workers of WORKERS > 1 do, each in a real process of its own."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from app.core import peers
from app.core.peers import SharedPeerCounts

LIMIT = 5
DEADLINE = 30.0  # seconds to wait for a worker process's answer


def _worker(path: Path, line: Connection) -> None:
    counts = SharedPeerCounts(path)
    line.send(counts.claim())
    while True:
        command, *args = line.recv()
        if command == "admit":
            line.send(counts.admit(args[0], LIMIT))
        elif command == "release":
            counts.release(args[0])
            line.send(None)
        else:
            line.send(None)
            return


class Worker:
    """A process standing for one HTTP worker: it claims a column, then admits and releases on command."""

    def __init__(self, path: Path) -> None:
        self.line, theirs = multiprocessing.get_context("fork").Pipe()
        self.process = multiprocessing.get_context("fork").Process(target=_worker, args=(path, theirs), daemon=True)
        self.process.start()
        assert self._answer() is True  # claimed a column

    def _answer(self) -> Any:
        assert self.line.poll(DEADLINE), "the worker process did not answer"
        return self.line.recv()

    def admit(self, peer: str) -> bool:
        self.line.send(("admit", peer))
        answer: bool = self._answer()
        return answer

    def release(self, peer: str) -> None:
        self.line.send(("release", peer))
        self._answer()

    def kill(self) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(DEADLINE)
        assert not self.process.is_alive()

    def stop(self) -> None:
        if self.process.is_alive():
            self.line.send(("exit",))
            self._answer()
            self.process.join(DEADLINE)


@contextmanager
def table(tmp_path: Path) -> Iterator[tuple[Path, SharedPeerCounts]]:
    path = tmp_path / "core.connections"
    core = SharedPeerCounts(path, create=True)  # the core makes it before its workers start
    try:
        yield path, core
    finally:
        core.close()


def test_one_peer_holds_at_most_the_limit_across_worker_processes(tmp_path: Path) -> None:
    with table(tmp_path) as (path, core):
        a, b = Worker(path), Worker(path)
        try:
            assert [a.admit("10.0.0.7") for _ in range(3)] == [True] * 3
            assert [b.admit("10.0.0.7") for _ in range(4)] == [True, True, False, False]  # 5 in all
            assert core.total("10.0.0.7") == LIMIT
            assert a.admit("10.0.0.8") and b.admit("10.0.0.8")  # another peer has its own count
            b.release("10.0.0.7")
            assert a.admit("10.0.0.7") and not b.admit("10.0.0.7")  # the place freed in B is taken in A
            b.release("10.0.0.99")  # a peer B never admitted: nothing changes
            assert core.total("10.0.0.7") == LIMIT and core.total("10.0.0.8") == 2
        finally:
            a.stop()
            b.stop()


def test_a_dead_workers_connections_are_given_back_to_the_next_worker(tmp_path: Path) -> None:
    """A worker killed with connections open leaves its counts behind (its connections died with it): the worker
    that replaces it takes its column and clears them; a live worker's counts stay."""
    with table(tmp_path) as (path, core):
        live, doomed = Worker(path), Worker(path)
        try:
            assert live.admit("10.0.0.7")
            assert all(doomed.admit("10.0.0.7") for _ in range(4))
            assert not live.admit("10.0.0.7")
            doomed.kill()
            assert core.total("10.0.0.7") == LIMIT  # still counted: nobody cleared the dead column yet
            replacement = Worker(path)
            try:
                assert core.total("10.0.0.7") == 1  # the live worker's one connection
                assert [replacement.admit("10.0.0.7") for _ in range(5)] == [True] * 4 + [False]
            finally:
                replacement.stop()
        finally:
            live.stop()


def test_a_full_table_lets_new_peers_in_uncounted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past SLOTS peers holding connections at once, a new peer is let in (not locked out) and not counted; a
    slot freed is used again."""
    with table(tmp_path) as (_, core):
        assert core.claim()
        slots = peers.SLOTS
        assert all(core.admit(f"10.1.{i // 256}.{i % 256}", LIMIT) for i in range(slots))
        assert all(core.admit("192.0.2.1", LIMIT) for _ in range(LIMIT + 3))  # the table is full: uncounted
        assert core.total("192.0.2.1") == 0
        core.release("192.0.2.1")  # a release of an uncounted connection changes nothing
        core.release("10.1.0.0")  # a slot freed
        assert [core.admit("192.0.2.1", LIMIT) for _ in range(LIMIT + 1)] == [True] * LIMIT + [False]


def test_a_table_left_locked_never_stalls_a_worker(tmp_path: Path) -> None:
    """A worker stopped while holding the table's lock (SIGSTOP, a debugger) must not stall the others' event loops:
    past LOCK_WAIT a connection is let in uncounted, and a release that met the lock is done at the next lock
    taken (a count never stays behind)."""
    with table(tmp_path) as (path, core):
        assert core.claim()
        assert [core.admit("10.0.0.7", LIMIT) for _ in range(2)] == [True, True]
        with path.open("r+b") as other:  # another open of the file: flock conflicts with it, as another process's
            fcntl.flock(other.fileno(), fcntl.LOCK_EX)
            try:
                answers: list[bool] = []
                worker = threading.Thread(target=lambda: answers.append(core.admit("10.0.0.7", LIMIT)), daemon=True)
                worker.start()
                worker.join(DEADLINE)
                assert not worker.is_alive(), "admit waited on the locked table"
                assert answers == [True]  # let in uncounted, after LOCK_WAIT
                core.release("10.0.0.7")  # deferred
                assert core.total("10.0.0.7") == 2
            finally:
                fcntl.flock(other.fileno(), fcntl.LOCK_UN)
        assert core.admit("10.0.0.8", LIMIT)  # the first lock taken does the deferred release
        assert core.total("10.0.0.7") == 1 and core.total("10.0.0.8") == 1
