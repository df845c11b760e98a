"""Decoding: validated bytes -> a reduced BGR array with its EXIF orientation applied (OpenCV, or Pillow for what
OpenCV does not read well), finer decodes on demand, and thumbnails."""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from app.errors import BadImage, EngineBusy, ImageTooLarge, OceanoError
from app.imaging.header import (
    _ORIENTATION_TAG,
    JPEG_MAX_FACTOR,
    MIN_DECODE_LONG_SIDE,
    ImageFormat,
    ImageHeader,
    _reduction_for,
    checked_header,
    read_header,
)
from app.imaging.limits import OPENCV_MAX_PIXELS

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """A BGR uint8 image. `scale` maps its pixel coordinates back to the original: orig = px * scale."""

    pixels: np.ndarray
    format: ImageFormat
    original_size: tuple[int, int]  # (width, height) after EXIF rotation
    scale: float = 1.0
    factor: int = 1  # the power of two at or above `scale`: the reduction the pixels were decoded at
    encoded: bytes | None = field(default=None, repr=False)  # kept when factor > 1, for decode_at
    # The long side the caller wanted at most (decode_image's max_side, e.g. /ws predict's PREDICT_MAX_SIDE): the
    # detector does not scale the image back up past it, or the reduction would buy no speed.
    max_side: int | None = None

    def decode_at(self, factor: int) -> np.ndarray:
        """The same image decoded at a finer reduction (a power of two, factor < self.factor), EXIF rotation
        applied. Any format: JPEG is scaled by libjpeg, others are decoded in full and area-resized."""
        if self.encoded is None or factor >= self.factor:
            return self.pixels
        try:
            header = read_header(self.encoded)
            return _decode_displayed(self.encoded, header, max(factor, 1))
        except OceanoError as exc:  # the bytes decoded once already; keep what we have rather than fail
            logger.warning("finer decode at 1/%d failed: %s", factor, exc.message)
            return self.pixels


# ---------------------------------------------------------------------------------------------- decoding
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_OPENCV_FORMATS = frozenset({ImageFormat.JPEG, ImageFormat.PNG, ImageFormat.WEBP, ImageFormat.BMP})


def _header_mismatch(header: ImageHeader, got: tuple[int, int]) -> BadImage:
    return BadImage(
        f"the {header.format.value.upper()} header says {header.width}x{header.height} but the "
        f"data decodes as {got[0]}x{got[1]}: the file is corrupt"
    )


def _area_reduce(pixels: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return pixels
    h, w = pixels.shape[:2]
    return cv2.resize(pixels, (math.ceil(w / factor), math.ceil(h / factor)), interpolation=cv2.INTER_AREA)


def _decode_displayed(data: bytes, header: ImageHeader, factor: int) -> np.ndarray:
    """BGR uint8 pixels as displayed (EXIF orientation applied), each stored side reduced to ceil(side / factor).
    The pixel cap was checked on `header` already."""
    pixels: np.ndarray | None = None
    # OpenCV drops alpha, so PNG/WebP with alpha go through Pillow to become white, not whatever lies beneath.
    # Above OpenCV's own limit (a configured cap higher than the one fixed at import) Pillow decodes too.
    if header.format in _OPENCV_FORMATS and not header.has_alpha and header.pixels <= OPENCV_MAX_PIXELS:
        pixels = _decode_with_opencv(data, header, factor)
    oriented = False
    if pixels is None:
        try:
            pixels, oriented = _decode_with_pillow(data, header, factor)
        except OceanoError:
            raise
        except Exception as exc:  # Pillow raises many types (OSError, ValueError, SyntaxError, ...) for bad data
            raise BadImage(
                f"cannot decode the {header.format.value.upper()} data: the file is corrupt or truncated"
            ) from exc
    return pixels if oriented else _apply_orientation(pixels, header.orientation)


def _decode_with_opencv(data: bytes, header: ImageHeader, factor: int) -> np.ndarray | None:
    """Pixels as stored, reduced by `factor`; None when OpenCV cannot decode them (Pillow is tried next)."""
    if header.format is ImageFormat.JPEG:
        native = min(factor, JPEG_MAX_FACTOR)  # libjpeg scales while decoding
        flags = _REDUCED_FLAGS[native]
    else:
        # As stored (grey stays one channel: a third of the memory of BGR), made BGR once reduced.
        native, flags = 1, cv2.IMREAD_UNCHANGED
    try:  # the orientation comes from our header
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:  # OpenCV's own limit: its parser saw more pixels than ours did
        raise BadImage(
            f"the {header.format.value.upper()} data is larger than its header says: the file is corrupt"
        ) from exc
    if pixels is None:
        logger.debug("OpenCV could not decode this %s; trying Pillow", header.format.value)
        return None
    if (pixels.shape[1], pixels.shape[0]) != (math.ceil(header.width / native), math.ceil(header.height / native)):
        raise _header_mismatch(header, (pixels.shape[1] * native, pixels.shape[0] * native))
    pixels = _area_reduce(pixels, factor // native)  # the full-size array is dropped here
    if pixels.dtype != np.uint8:
        pixels = cv2.convertScaleAbs(pixels, alpha=255.0 / 65535.0)  # 16-bit PNG
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 4:  # alpha the header did not announce (32-bit BMP): dropped, as IMREAD_COLOR does
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR)
    return pixels


def _decode_with_pillow(data: bytes, header: ImageHeader, factor: int) -> tuple[np.ndarray, bool]:
    """(pixels reduced by `factor`, whether Pillow applied the EXIF orientation already). Reduced before any
    conversion, so that no full-size copy is made after the decode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as opened:  # lazy: parses the header, allocates nothing yet
            # Recent Pillow reports a TIFF's size as displayed and applies its orientation while loading.
            sizes = {(header.width, header.height)}
            if header.format is ImageFormat.TIFF:
                sizes.add(header.display_size)
            if opened.size not in sizes:
                raise _header_mismatch(header, opened.size)
            opened.seek(0)  # first frame of animations
            opened.load()
            oriented = (
                header.format is ImageFormat.TIFF
                and header.orientation != 1
                and _ORIENTATION_TAG not in getattr(opened, "tag_v2", {_ORIENTATION_TAG: 0})
            )
            im: Image.Image = opened
            if im.mode.startswith("I;16") or im.mode == "I":
                values = np.asarray(im, dtype=np.float32)
                peak = max(float(values.max()), 1.0)
                values = _area_reduce(values, factor)
                grey = np.clip(values * (255.0 / (65535.0 if peak > 255 else 255.0)), 0, 255).astype(np.uint8)
                return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), oriented
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im if im.mode == "RGBA" else im.convert("RGBA")
                if factor > 1:
                    im = im.reduce(factor)  # Pillow weighs colours by alpha when reducing RGBA
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)  # transparent areas become white
            else:
                if im.mode not in ("RGB", "L"):
                    im = im.convert("RGB")
                if factor > 1:
                    im = im.reduce(factor)  # box average, size rounded up like libjpeg's
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), oriented


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as displayed for an EXIF orientation (1: as stored)."""
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int | None = None, header: ImageHeader | None = None
) -> DecodedImage:
    """Validate and decode. Raises ImageTooLarge, UnsupportedImage or BadImage with a message naming why.

    Size and pixel caps are checked on the header before any decoder runs. The pixels are reduced by the largest
    power of two that keeps MIN_DECODE_LONG_SIDE (or `max_side`, if smaller) on the long side; with `max_side`
    they are then area-resized so that the long side is at most `max_side`. `header`: checked_header's answer for
    these bytes and limits, when the caller has it already (it is not parsed twice)."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if header is None:
        header = checked_header(data, max_bytes=max_bytes, max_pixels=max_pixels)
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's guard must not refuse what the caller's cap allows
    target = MIN_DECODE_LONG_SIDE if max_side is None else min(max_side, MIN_DECODE_LONG_SIDE)
    factor = _reduction_for(header, target)
    pixels = _decode_displayed(data, header, factor)
    if max_side is not None and max(pixels.shape[:2]) > max_side:
        shrink = max_side / max(pixels.shape[:2])
        size = (max(1, round(pixels.shape[1] * shrink)), max(1, round(pixels.shape[0] * shrink)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    width, height = header.display_size
    scale = width / pixels.shape[1]
    factor = 1 << max(0, math.ceil(math.log2(scale) - 1e-9))  # for the default path: the decode factor itself
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels),
        format=header.format,
        original_size=(width, height),
        scale=scale,
        factor=factor,
        encoded=data if factor > 1 else None,
        max_side=max_side,
    )


READ_CHUNK = 1 << 20


def read_image_bytes(path: Path, *, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """Read a regular file from disk, never more than `max_bytes`. Opened without blocking (a FIFO or a device put
    where a photo was listed never hangs the reader in open()), then checked on the open descriptor (fstat), so what
    is read is what was checked; `follow_symlinks` False refuses a link (O_NOFOLLOW)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except ValueError as exc:  # a NUL in the name
        raise BadImage(f"cannot read {path!r}: {exc}") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise BadImage(f"cannot read {path}: it is a symbolic link (links are not followed)") from exc
        raise BadImage(f"cannot read {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage(f"cannot read {path}: not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise ImageTooLarge(f"file is {st.st_size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(READ_CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew since fstat
                raise ImageTooLarge(f"file is over the {max_bytes / 2**20:.0f} MB limit")
        return b"".join(chunks)
    except OSError as exc:
        raise BadImage(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kinds |= {stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}
    return next((name for test, name in kinds.items() if test(mode)), "not a plain file")


def read_image_file(path: Path, *, max_bytes: int, max_pixels: int, max_side: int | None = None) -> DecodedImage:
    """Read and decode a file from disk, refusing oversized files before reading them."""
    data = read_image_bytes(path, max_bytes=max_bytes)
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side)


def crop_thumbnail(
    image: np.ndarray, bbox: tuple[float, float, float, float], *, size: int, margin: float = 0.25
) -> np.ndarray:
    """A square crop around a face box with some context, resized to size x size."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = bbox
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    half = max(side / 2, 1.0)
    left, top = int(round(cx - half)), int(round(cy - half))
    right, bottom = int(round(cx + half)), int(round(cy + half))
    # Pad instead of clipping so the face stays centred near the image border.
    pad = max(0, -left, -top, right - w, bottom - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        left, top, right, bottom = left + pad, top + pad, right + pad, bottom + pad
    crop = image[top:bottom, left:right]
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise BadImage("could not encode a JPEG thumbnail")
    return buf.tobytes()


class PixelGate:
    """Bounds the pixels being decoded at once in the whole process (DECODE_MEGAPIXELS), so that memory no longer
    scales with what clients send at the same time. A decode that finds no room within `timeout` is refused
    (EngineBusy: 503, retry shortly); one image bigger than the whole bound still runs, alone."""

    def __init__(self, max_pixels: int, timeout: float) -> None:
        self.max_pixels = max_pixels
        self.timeout = timeout
        self._cond = threading.Condition()
        self.in_use = 0

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cond:
            room = self._cond.wait_for(
                lambda: self.in_use == 0 or self.in_use + pixels <= self.max_pixels, timeout=self.timeout
            )
            if not room:
                raise EngineBusy(
                    f"{self.in_use / 1e6:.0f} megapixels are being decoded already (DECODE_MEGAPIXELS="
                    f"{self.max_pixels / 1e6:.0f}); retry shortly",
                    retry_after=1.0,
                )
            self.in_use += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()
