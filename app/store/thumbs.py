"""Face thumbnails on disk: THUMBS_DIR/<first two hex digits>/<point id>.jpg (fan-out keeps folders small).

A thumbnail is first staged under THUMBS_DIR/.pending/ (a unique name per write, so concurrent writers of one
photo never collide) and moved into place only once its point is in the store; a crash in between leaves only
staged files, which `sweep_pending` settles at start-up. Nothing half-written is ever under its final name.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from app.errors import NotFound, StorageFull

logger = logging.getLogger(__name__)

PENDING_DIR = ".pending"


def _disk_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left on the device for {what}; free some disk space and retry")
    return exc


class ThumbnailStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pending = root / PENDING_DIR
        self.pending.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def validate_id(face_id: str) -> str:
        """Only canonical UUIDs name thumbnails, so no request can reach outside THUMBS_DIR."""
        try:
            canonical = str(uuid.UUID(face_id))
        except (ValueError, AttributeError, TypeError) as exc:
            raise NotFound(f"no thumbnail {face_id!r}: face ids are UUIDs") from exc
        if canonical != face_id.lower():
            raise NotFound(f"no thumbnail {face_id!r}: face ids are UUIDs")
        return canonical

    def path_for(self, face_id: str) -> Path:
        canonical = self.validate_id(face_id)
        return self.root / canonical[:2] / f"{canonical}.jpg"

    def stage(self, face_id: str, jpeg: bytes) -> Path:
        """Write a thumbnail under a unique staging name; `promote` moves it into place."""
        canonical = self.validate_id(face_id)
        staged = self.pending / f"{canonical}.{uuid.uuid4().hex}.jpg"
        try:
            with staged.open("wb") as fh:
                fh.write(jpeg)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise _disk_error(exc, "a face thumbnail") from exc
        return staged

    def promote(self, face_id: str, staged: Path) -> None:
        """Move a staged thumbnail into place (atomic: a reader never sees half a file)."""
        path = self.path_for(face_id)
        try:
            path.parent.mkdir(exist_ok=True)
            os.replace(staged, path)
        except FileNotFoundError:
            pass  # promoted already (a retried write) or swept
        except OSError as exc:
            raise _disk_error(exc, "a face thumbnail") from exc

    @staticmethod
    def discard(staged: Iterable[Path]) -> None:
        for path in staged:
            path.unlink(missing_ok=True)

    def save(self, face_id: str, jpeg: bytes) -> None:
        self.promote(face_id, self.stage(face_id, jpeg))

    def delete(self, face_id: str) -> None:
        self.path_for(face_id).unlink(missing_ok=True)

    def existing(self, face_id: str) -> Path:
        path = self.path_for(face_id)
        if not path.is_file():
            raise NotFound(f"no thumbnail for face {face_id}")
        return path

    def sweep_pending(self, stored: Callable[[list[str]], set[str]]) -> tuple[int, int]:
        """Settle what a crash left staged: a thumbnail whose point is in the store (`stored` answers which ids
        are) is moved into place, any other is removed. Call before any writer starts. Returns (promoted,
        removed)."""
        staged: dict[str, list[Path]] = {}
        for path in self.pending.iterdir():
            try:
                face_id = self.validate_id(path.name.split(".", 1)[0])
            except NotFound:
                path.unlink(missing_ok=True)  # not ours
                continue
            staged.setdefault(face_id, []).append(path)
        if not staged:
            return 0, 0
        ids = list(staged)
        present: set[str] = set()
        for start in range(0, len(ids), 1000):
            present |= stored(ids[start : start + 1000])
        promoted = removed = 0
        for face_id, paths in staged.items():
            keep = paths[0] if face_id in present and not self.path_for(face_id).exists() else None
            if keep is not None:
                self.promote(face_id, keep)
                promoted += 1
            for path in paths:
                if path is not keep:
                    path.unlink(missing_ok=True)
                    removed += 1
        logger.warning(
            "thumbnails left staged by an interrupted write: %d moved into place, %d removed", promoted, removed
        )
        return promoted, removed
