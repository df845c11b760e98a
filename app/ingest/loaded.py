"""A file between its decode worker and the commit buffer: how it is loaded, and the state entries it becomes."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.errors import OceanoError
from app.faces import Face
from app.imaging import DecodedImage, decode_image
from app.ingest.commit import Entry, EntryKind
from app.ingest.model import FileRecord, FileStatus
from app.ingest.read import read_with_deadline
from app.service import IndexedImage, content_hash
from app.store import FacePoint


@dataclass(slots=True)
class LoadedFile:
    """What a decode worker hands to the inference loop."""

    path: str
    size: int
    mtime_ns: int
    previous: FileRecord | None = None  # the record of an earlier run that the file may still match
    content_hash: str | None = None
    image: DecodedImage | None = None
    unchanged: bool = False  # same bytes as `previous`: only the record's size/mtime are refreshed
    error: str | None = None


def unread_entry(loaded: LoadedFile, run_id: str) -> Entry | None:
    """The entry of a file that needs no inference (failed, or unchanged content under a new mtime); None for one
    stopped before it was read (redone next time)."""
    if loaded.error == "stopped":
        return None
    if loaded.unchanged and loaded.previous is not None:
        record = FileRecord(
            path=loaded.path,
            size=loaded.size,
            mtime_ns=loaded.mtime_ns,
            content_hash=loaded.content_hash,
            status=loaded.previous.status,
            faces=loaded.previous.faces,
            run_id=run_id,
        )
        return Entry(record, EntryKind.SKIPPED)
    record = FileRecord(
        path=loaded.path,
        size=loaded.size,
        mtime_ns=loaded.mtime_ns,
        content_hash=loaded.content_hash,
        status=FileStatus.FAILED,
        reason=loaded.error or "unknown error",
        run_id=run_id,
    )
    return Entry(record, EntryKind.FAILED)


def inferred_entries(
    batch: Sequence[LoadedFile],
    faces: Sequence[list[Face]],
    results: Sequence[IndexedImage],
    points: Sequence[FacePoint],
    run_id: str,
) -> list[Entry]:
    """One entry per analysed file, with its points; the pixels are released here (only the points wait for the
    upsert)."""
    by_file: dict[str, list[FacePoint]] = {}
    for point in points:
        by_file.setdefault(point.payload["file"], []).append(point)
    entries = []
    for item, row, result in zip(batch, faces, results, strict=True):
        item.image = None
        record = FileRecord(
            path=item.path,
            size=item.size,
            mtime_ns=item.mtime_ns,
            content_hash=item.content_hash,
            status=FileStatus.DONE if row else FileStatus.NO_FACE,  # faces all refused (quality): done, none stored
            faces=len(result.ids),
            run_id=run_id,
        )
        kind = EntryKind.INGESTED if row else EntryKind.NO_FACE
        entries.append(Entry(record, kind, result, tuple(by_file.get(item.path, ()))))
    return entries


def load_file(
    path: Path,
    st: os.stat_result | None,
    previous: FileRecord | None,
    *,
    settings: Settings,
    follow_symlinks: bool,
    halt: threading.Event,
) -> LoadedFile:
    """Read once (regular files only, within INGEST_FILE_TIMEOUT), hash, decode; errors become the file's reason."""
    loaded = LoadedFile(
        path=str(path), size=st.st_size if st else -1, mtime_ns=st.st_mtime_ns if st else -1, previous=previous
    )
    if halt.is_set():
        loaded.error = "stopped"
        return loaded
    try:
        if st is None:
            loaded.error = "cannot read: the file vanished or cannot be listed"
            return loaded
        if not stat.S_ISREG(st.st_mode):
            loaded.error = "not a regular file"
            return loaded
        data = read_with_deadline(
            path,
            max_bytes=settings.max_upload_bytes,
            follow_symlinks=follow_symlinks,
            timeout=settings.ingest_file_timeout,
            stop=halt,
        )
        if data is None:
            loaded.error = "stopped"
            return loaded
        loaded.content_hash = content_hash(data)
        if previous is not None and previous.content_hash == loaded.content_hash:
            loaded.unchanged = True
            return loaded
        loaded.image = decode_image(
            data, max_bytes=settings.max_upload_bytes, max_pixels=int(settings.max_megapixels * 1e6)
        )
    except OceanoError as exc:
        loaded.error = exc.message.replace(str(path), "the file")
    except Exception as exc:  # a decoder crash on one file must not stop the run
        loaded.error = f"cannot decode: {type(exc).__name__}: {exc}"
    return loaded
