"""/health and /status say when an index build runs and how many points wait unindexed (searched exactly)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.store import EdgeStore, FacePoint


def synthetic(n: int, dim: int) -> list[FacePoint]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [FacePoint(str(uuid.uuid4()), v, {"file": f"s{i}.jpg", "face_index": 0}) for i, v in enumerate(x)]


class SlowShard:
    """The real shard, but optimize() waits for the test (in Python, so the GIL is free and requests answer)."""

    def __init__(self, shard: Any) -> None:
        self.shard, self.started, self.release = shard, threading.Event(), threading.Event()

    def optimize(self) -> bool:
        self.started.set()
        assert self.release.wait(60)
        return bool(self.shard.optimize())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shard, name)


def test_unindexed_points_and_a_running_build_are_reported(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(index_threshold=400, max_segment_points=400)
    store: EdgeStore = client.app.state.service.store  # type: ignore[attr-defined]
    slow = SlowShard(store._shard)
    store._shard = slow
    store.upsert(synthetic(100, store.spec.dim))
    status = client.get("/status").json()
    assert status["unindexed"] == 100 and status["index_building"] is False and status["vectors"] == 100
    store.upsert(synthetic(400, store.spec.dim))  # past INDEX_THRESHOLD: a build is due on the store's thread
    assert slow.started.wait(30)  # upsert returned; the build runs beside it
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["index_building"] is True
    assert health.json()["unindexed"] > 0
    assert client.get("/status").json()["index_building"] is True
    slow.release.set()
    assert store.wait_indexed(120)
    status = client.get("/status").json()
    assert status["index_building"] is False and status["unindexed"] == 0 and status["status"] == "green"
    assert client.get("/health").json()["unindexed"] == 0
