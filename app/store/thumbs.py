"""Face thumbnails on disk: THUMBS_DIR/<first two hex digits>/<point id>.jpg (fan-out keeps folders small)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from app.errors import NotFound


class ThumbnailStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

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

    def save(self, face_id: str, jpeg: bytes) -> None:
        path = self.path_for(face_id)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(jpeg)
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    def delete(self, face_id: str) -> None:
        self.path_for(face_id).unlink(missing_ok=True)

    def existing(self, face_id: str) -> Path:
        path = self.path_for(face_id)
        if not path.is_file():
            raise NotFound(f"no thumbnail for face {face_id}")
        return path
