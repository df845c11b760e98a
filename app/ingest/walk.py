"""The folder walk of an ingest run: lazy, entry by entry, with excludes and symlink rules."""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.imaging import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

Roots = tuple[Path, ...]  # resolved folders a walk must stay in (INGEST_ROOTS); empty: anywhere


def inside(path: str | Path, roots: Roots) -> bool:
    """Whether the file or folder a path really is (links resolved) lies in one of `roots`."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(r) for r in roots)


def iter_image_files(
    root: Path,
    *,
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
    skip_dirs: Sequence[Path] = (),
    stop: threading.Event | None = None,
    within: Roots = (),
) -> Iterator[Path]:
    """Image files under `root` (recursively; extensions case-insensitive), or `root` itself when it is a
    file. Lazy: each folder is read entry by entry (os.scandir) and files are yielded as they come, so a
    folder of millions of files is never held as a list. Only the folders still to visit are kept.

    `exclude`: glob patterns matched against the path relative to `root` and against the bare name; a
    matching folder is not descended into. Symbolic links (files and folders) are skipped unless
    `follow_symlinks`; followed folders are visited once (loops are cut by device and inode). `within`: the
    root and every followed link must really lie in one of these folders; a link leading out is skipped."""
    if within and not inside(root, within):
        logger.warning("not walking %s: it lies outside INGEST_ROOTS", root)
        return
    if root.is_file():
        yield root
        return
    skip = {str(p) for p in skip_dirs}
    visited: set[tuple[int, int]] = set()
    pending: deque[Path] = deque([root])
    while pending:
        if stop is not None and stop.is_set():
            return
        folder = pending.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in visited:
                continue
            visited.add(key)
            scanner = os.scandir(folder)
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc.strerror)
            continue
        with scanner:
            for entry in scanner:
                try:
                    is_link = entry.is_symlink()
                    if is_link and not follow_symlinks:
                        continue
                    if is_link and within and not inside(entry.path, within):
                        logger.warning("skipping %s: the link leads outside INGEST_ROOTS", entry.path)
                        continue
                    is_dir = entry.is_dir(follow_symlinks=True)
                    is_file = not is_dir and entry.is_file(follow_symlinks=True)
                except OSError:
                    continue
                if not (is_dir or is_file):
                    continue
                path = Path(entry.path)
                if exclude and _excluded(path, root, exclude):
                    continue
                if is_dir:
                    if entry.path not in skip:
                        pending.append(path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    yield path


def _excluded(path: Path, root: Path, patterns: Sequence[str]) -> bool:
    relative = path.relative_to(root).as_posix()
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(path.name, p) for p in patterns)
