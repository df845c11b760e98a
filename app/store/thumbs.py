"""Face thumbnails on disk: THUMBS_DIR/<first two hex digits>/<point id>.jpg (fan-out keeps folders small).

A thumbnail is first staged under THUMBS_DIR/.pending/ (a unique name per write, so concurrent writers of one
photo never collide) and moved into place only once its point is in the store; a crash in between leaves only
staged files, which `sweep_pending` settles at start-up. Nothing half-written is ever under its final name.

A crop whose point is gone (an erasure cut short before the journal existed, a file deleted by hand from the store)
is removed by `sweep_orphans` at start-up, only when THUMBS_DIR belongs to one collection alone: OWNERS_FILE lists
the collections that have used it, and a folder shared by several (a second COLLECTION_NAME, replicas reaching
their cluster by different URLs) is never swept, since a crop absent from one collection may be another's.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from app.errors import NotFound, StorageFull

logger = logging.getLogger(__name__)

PENDING_DIR = ".pending"
OWNERS_FILE = ".owners.json"
ORPHAN_MIN_AGE = 600.0  # seconds: a younger crop is left alone (a writer elsewhere may be about to see its point)
SWEEP_BATCH = 1000  # ids asked of the store at once


def _disk_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left on the device for {what}; free some disk space and retry")
    return exc


def _canonical(face_id: str) -> bool:
    try:
        return str(uuid.UUID(face_id)) == face_id
    except ValueError:
        return False


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

    # ------------------------------------------------------------------ orphans
    def claim(self, owner: str, *, alone: bool) -> bool:
        """Record that collection `owner` uses this folder; True when it is the only one that ever has, so that
        its orphan crops may be swept. `alone`: whether, for a folder with crops and no record yet (made before
        records were kept), nothing else could have written them (no other collection beside this one)."""
        path = self.root / OWNERS_FILE
        try:
            owners = set(json.loads(path.read_text()).get("owners", []))
        except FileNotFoundError:
            owners = set() if alone or not any(self._crops()) else {"unknown (crops written before owners were kept)"}
        except (OSError, ValueError) as exc:
            logger.warning("cannot read %s (%s): orphan crops are not removed", path, exc)
            return False
        if owner not in owners:
            owners.add(owner)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"owners": sorted(owners)}, indent=2))
            os.replace(tmp, path)
        if owners != {owner}:
            logger.warning(
                "THUMBS_DIR %s holds the crops of several collections (%s): crops without a point are not removed "
                "at start-up; give each collection its own THUMBS_DIR",
                self.root,
                ", ".join(sorted(owners)),
            )
        return owners == {owner}

    def _crops(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(face id, entry) of every crop in place: one pass over the fan-out folders."""
        with os.scandir(self.root) as folders:
            for folder in folders:
                if len(folder.name) != 2 or not folder.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(folder.path) as files:
                    for entry in files:
                        stem, _, ext = entry.name.partition(".")
                        if ext == "jpg" and _canonical(stem):
                            yield stem, entry

    def sweep_orphans(
        self,
        stored: Callable[[list[str]], set[str]],
        *,
        min_age: float = ORPHAN_MIN_AGE,
        stop: threading.Event | None = None,
    ) -> int:
        """Remove the crops whose point is not in the store (`stored` answers which of some ids are), older than
        `min_age` seconds. One walk of the folder; the store is asked SWEEP_BATCH ids at a time; `stop` ends it
        between batches. Only after `claim` said the folder is this collection's alone. Safe beside writers: a crop
        is put in place only once its point is stored, and one written since the store was asked is younger than
        `min_age`. Returns the number removed."""
        cutoff = time.time() - min_age
        removed = 0
        batch: dict[str, os.DirEntry[str]] = {}

        def settle() -> int:
            present = stored(list(batch))
            gone = 0
            for face_id, entry in batch.items():
                if face_id in present:
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        gone += 1
                except FileNotFoundError:
                    pass
            batch.clear()
            return gone

        for face_id, entry in self._crops():
            batch[face_id] = entry
            if len(batch) >= SWEEP_BATCH:
                removed += settle()
                if stop is not None and stop.is_set():
                    return removed
        if batch:
            removed += settle()
        if removed:
            logger.warning("removed %d face crops whose faces are no longer stored", removed)
        return removed
