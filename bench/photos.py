"""Test photo folders for the ingest benchmark and crash test: the labelled eval photos replicated under other
names, each copy with other bytes (so other content hashes, other point ids) and the same faces."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
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


def write_variant(source: Path, dest: Path, k: int) -> bool:
    """Another file with the same faces and other bytes for every k: mirrored for odd k, a corner block set by k
    (as tests/support.write_variant). False when the source cannot be read."""
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        return False
    if k % 2:
        image = cv2.flip(image, 1)
    image[:8, :8] = (k % 256, k // 256 % 256, 128)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return bool(cv2.imwrite(str(dest), image, [cv2.IMWRITE_JPEG_QUALITY, 95 - k % 10]))


def make_variant_folder(target: Path, count: int, photos: list[Path], threads: int = 8) -> list[Path]:
    """`count` JPEG files made from `photos` in turn (variant k of photo i is file k * len(photos) + i), in
    sub-folders of at most 250 files; written by `threads` threads (OpenCV's codecs release the GIL)."""
    if not photos:
        raise SystemExit("no photos to make variants of")
    jobs = [
        (photos[n % len(photos)], target / f"part{n // 250}" / f"v{n:05d}.jpg", n // len(photos)) for n in range(count)
    ]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        written = list(pool.map(lambda job: write_variant(*job), jobs))
    return [dest for (_, dest, _), ok in zip(jobs, written, strict=True) if ok]
