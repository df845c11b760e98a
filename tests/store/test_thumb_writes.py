"""Thumbnail writes: concurrent writers of one face never collide, and a full disk is a clear StorageFull with
nothing half-written (a real tmpfs filled up, mounted for the test)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.errors import StorageFull
from app.store import ThumbnailStore
from tests.support import small_tmpfs

FACE = "6f0d6a3e-9c1b-5b7e-8a8e-0cea00000001"


def test_concurrent_saves_of_one_face_never_collide(tmp_path: Path) -> None:
    # Before: the temporary name carried only the pid, so two threads saving one photo's face collided.
    thumbs = ThumbnailStore(tmp_path)
    jpegs = [bytes([0xFF, 0xD8, k % 256]) * 200 for k in range(600)]
    with ThreadPoolExecutor(16) as pool:
        errors = [f.exception() for f in [pool.submit(thumbs.save, FACE, j) for j in jpegs]]
    assert errors.count(None) == 600, [e for e in errors if e][:3]
    assert thumbs.existing(FACE).read_bytes() in jpegs
    assert not list(thumbs.pending.iterdir()) and len(list(tmp_path.rglob("*.jpg"))) == 1


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", "64k") as mount:
        yield mount


def test_full_disk_is_storage_full_and_leaves_nothing(full_disk: Path) -> None:
    thumbs = ThumbnailStore(full_disk / "thumbs")
    thumbs.save(FACE, b"\xff\xd8 fits")
    with pytest.raises(StorageFull, match="no space left"):
        thumbs.stage("6f0d6a3e-9c1b-5b7e-8a8e-0cea00000002", b"\xff" * (256 * 1024))
    assert not list(thumbs.pending.iterdir())  # no partial file left behind
    assert thumbs.existing(FACE).read_bytes() == b"\xff\xd8 fits"
