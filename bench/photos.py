"""Test photo folders for the ingest benchmark and crash test: the labelled eval photos replicated under other
names, each copy with other bytes (so other content hashes, other point ids) and the same faces."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2

from bench.common import EVAL_DIR

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


def eval_photos(source: Path = EVAL_DIR) -> list[Path]:
    if not source.is_dir():
        raise SystemExit(f"the eval photos are not at {source}: this benchmark needs them (set OCEANO_EVAL_DIR)")
    return sorted(p for p in source.iterdir() if p.suffix.lower() in EXTENSIONS)


def make_photo_folder(target: Path, *, copies: int, source: Path = EVAL_DIR) -> list[Path]:
    """`copies` versions of every eval photo: copy 0 byte for byte, the others re-encoded as JPEG (odd ones
    mirrored, quality varying), spread over a few sub-folders like a real photo library."""
    photos = eval_photos(source)
    out: list[Path] = []
    for k in range(copies):
        folder = target / f"batch{k % 3}" / f"copy{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for photo in photos:
            if k == 0:
                dest = folder / photo.name
                shutil.copyfile(photo, dest)
            else:
                dest = folder / f"{photo.stem}_v{k}.jpg"
                image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
                if image is None:
                    continue
                if k % 2:
                    image = cv2.flip(image, 1)
                cv2.imwrite(str(dest), image, [cv2.IMWRITE_JPEG_QUALITY, 95 - 2 * k])
            out.append(dest)
    return out
