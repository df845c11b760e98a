"""bench.scale's synthetic collection: N face-like 512-d unit vectors, 50,000 identity centres per million points,
each point = 0.75 x its centre + noise, renormalised (points of one identity have cosine ~0.56, like ArcFace
embeddings of one person), regenerated deterministically chunk by chunk, with exact top-k for recall."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np

DIM = 512
CHUNK = 1000  # points per upsert, and per generated chunk
CENTRES_PER_MILLION = 50_000
CENTRE_WEIGHT = 0.75
TOP = 10


class Data:
    """The synthetic collection, regenerated deterministically chunk by chunk."""

    def __init__(self, points: int, seed: int = 7) -> None:
        self.points = points
        self.seed = seed
        self.n_centres = max(1, round(CENTRES_PER_MILLION * points / 1_000_000))
        rng = np.random.default_rng(seed)
        self.centres = _unit(rng.standard_normal((self.n_centres, DIM), dtype=np.float32))

    def _around(self, rng: np.random.Generator, centre_ids: np.ndarray) -> np.ndarray:
        noise = _unit(rng.standard_normal((len(centre_ids), DIM), dtype=np.float32))
        return _unit(CENTRE_WEIGHT * self.centres[centre_ids] + np.sqrt(1 - CENTRE_WEIGHT**2) * noise)

    def chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk k: (centre ids, vectors) of points k*CHUNK .. (k+1)*CHUNK."""
        n = min(CHUNK, self.points - k * CHUNK)
        rng = np.random.default_rng((self.seed, k))
        centre_ids = rng.integers(self.n_centres, size=n)
        return centre_ids, self._around(rng, centre_ids)

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for k in range((self.points + CHUNK - 1) // CHUNK):
            centre_ids, vectors = self.chunk(k)
            yield k * CHUNK, centre_ids, vectors

    def queries(self, n: int) -> np.ndarray:
        """Held-out faces: new points around existing identities (never in the collection)."""
        rng = np.random.default_rng((self.seed, 2**31))
        return self._around(rng, rng.integers(self.n_centres, size=n))

    def exact_top(self, queries: np.ndarray, k: int = TOP) -> np.ndarray:
        """Indices of the exact top-k points of each query (cosine = dot on unit vectors)."""
        best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(queries), k), dtype=np.int64)
        for start, _, vectors in self.chunks():
            scores = queries @ vectors.T
            all_s = np.concatenate([best_s, scores], axis=1)
            all_i = np.concatenate(
                [best_i, np.broadcast_to(np.arange(start, start + len(vectors)), scores.shape)], axis=1
            )
            keep = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(all_s, keep, axis=1)
            best_i = np.take_along_axis(all_i, keep, axis=1)
        return best_i


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def point_uuid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def point_index(point_id: str) -> int:
    return uuid.UUID(point_id).int - 1
