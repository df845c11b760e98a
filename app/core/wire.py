"""What the core process and its HTTP workers share: where the core listens, the key that proves a caller is one
of ours, the shared admission estimate, the peers' connection counts (app.core.peers), and how a head crosses the
socket.

Calls are `multiprocessing.connection` messages on a Unix socket under STATE_DIR (pickled; an authkey checks
both ends): `(method, args, kwargs)` in, `(True, value)` or `(False, exception)` out. Domain errors pickle with
their attributes (app.errors), so the worker raises the core's error again and the HTTP error table applies."""

from __future__ import annotations

import copyreg
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.heads import Head, HeadRegistry
from app.heads.head import ModelInfo
from app.heads.spec import HeadSpec
from app.people import Clusters, People

ADDRESS_ENV = "OCEANO_CORE_SOCKET"  # set by the core for the workers it starts, with the two below
AUTHKEY_ENV = "OCEANO_CORE_AUTHKEY"
ESTIMATE_ENV = "OCEANO_CORE_ESTIMATE"
CONNECTIONS_ENV = "OCEANO_CORE_CONNECTIONS"
SOCKET_NAME = "core.sock"
ESTIMATE_NAME = "core.estimate"
CONNECTIONS_NAME = "core.connections"
_ESTIMATE = struct.Struct("<d")  # seconds a request arriving now would wait for the engine


class Facade(StrEnum):
    """The facades of app.people an HTTP worker calls in the core: `<facade>.<method>` on the socket."""

    PEOPLE = "people"  # subjects, feedback, the overview
    CLUSTERS = "clusters"  # the clusters of unknown faces (People.clusters)


# What stays in the core: `identify` fills in the faces it is given, which a copy sent over the socket cannot do
# (the core's search identifies faces before its answers leave); a cluster job's runner and record iterator are
# the job manager's, its journal replay and erasure hook the core's own.
LOCAL_METHODS = {
    Facade.PEOPLE: frozenset({"identify"}),
    Facade.CLUSTERS: frozenset({"job", "iter_records", "finish_pending", "left_cluster"}),
}
FACADE_TYPES: dict[Facade, type] = {Facade.PEOPLE: People, Facade.CLUSTERS: Clusters}


def remote_methods(facade: Facade) -> frozenset[str]:
    """The methods of a facade an HTTP worker calls in the core: every public one but LOCAL_METHODS (methods
    added later cross without a list to keep up)."""
    return frozenset(
        name
        for name, value in vars(FACADE_TYPES[facade]).items()
        if callable(value) and not name.startswith("_") and name not in LOCAL_METHODS[facade]
    )


@dataclass(frozen=True, slots=True)
class CoreAddress:
    socket: Path
    authkey: bytes
    estimate: Path
    connections: Path  # the peers' open connections, counted by every worker (app.core.peers)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> CoreAddress:
        return cls(state_dir / SOCKET_NAME, os.urandom(32), state_dir / ESTIMATE_NAME, state_dir / CONNECTIONS_NAME)

    @classmethod
    def from_env(cls) -> CoreAddress | None:
        """The core's address when this process is one of its HTTP workers, else None."""
        socket = os.environ.get(ADDRESS_ENV)
        if not socket:
            return None
        return cls(
            Path(socket),
            bytes.fromhex(os.environ[AUTHKEY_ENV]),
            Path(os.environ[ESTIMATE_ENV]),
            Path(os.environ[CONNECTIONS_ENV]),
        )

    def export(self) -> None:
        """Into the environment the worker processes inherit."""
        os.environ[ADDRESS_ENV] = str(self.socket)
        os.environ[AUTHKEY_ENV] = self.authkey.hex()
        os.environ[ESTIMATE_ENV] = str(self.estimate)
        os.environ[CONNECTIONS_ENV] = str(self.connections)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What a worker learns once, at connection: the model pack, the store's backend and the heads (their specs
    and descriptions; their ONNX sessions stay in the core)."""

    model_name: str
    fingerprint: str
    backend: str
    heads: HeadRegistry
    core_pid: int


# ---------------------------------------------------------------------------------------------- the estimate
class EstimateBoard:
    """The engine's estimated wait, written by the core a hundred times a second and read by every worker's
    door without a call (a memory-mapped file of 8 bytes under STATE_DIR)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if create:
            path.write_bytes(_ESTIMATE.pack(0.0))
            path.chmod(0o600)
        with path.open("r+b") as f:
            self._map = mmap.mmap(f.fileno(), _ESTIMATE.size)

    def write(self, seconds: float) -> None:
        _ESTIMATE.pack_into(self._map, 0, seconds)

    def read(self) -> float:
        value: float = _ESTIMATE.unpack_from(self._map, 0)[0]
        return value

    def close(self) -> None:
        self._map.close()


# ---------------------------------------------------------------------------------------------- heads
def _detached_head(spec: HeadSpec, path: Path, origin: str, info: ModelInfo) -> Head:
    """A head as a worker knows it: spec, file and model description, no ONNX session (it never runs there;
    the core runs the head of the same name)."""
    head = Head.__new__(Head)
    head.spec, head.path, head.origin, head.info = spec, path, origin, info
    return head


def _reduce_head(head: Head) -> tuple[Callable[..., Head], tuple[Any, ...]]:
    return _detached_head, (head.spec, head.path, head.origin, head.info)


copyreg.pickle(Head, _reduce_head)
