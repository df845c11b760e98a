"""Bytes -> validated BGR ndarray, and thumbnails.

Formats are recognised by their signature (not the file name or the declared content type), dimensions
are read from the header before any pixel is decoded, and big JPEGs are decoded at a reduced scale
directly by libjpeg, which is far cheaper than decoding at full size and resizing.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from app.errors import BadImage, ImageTooLarge, UnsupportedImage

logger = logging.getLogger(__name__)

# Pillow's own bomb guard would raise with a less useful message; ours runs first with the real limit.
Image.MAX_IMAGE_PIXELS = None

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# Keep at least this many pixels on the long side when decoding at a reduced scale: the detector never sees
# more than 640. Faces too small in the reduced image for a sharp 112x112 crop are aligned from a finer decode
# of the same bytes (DecodedImage.decode_at), which the engine asks for only when it finds such faces.
MIN_DECODE_LONG_SIDE = 640


class ImageFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    BMP = "bmp"
    TIFF = "tiff"
    GIF = "gif"


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """A BGR uint8 image. `scale` maps its pixel coordinates back to the original: orig = px * scale."""

    pixels: np.ndarray
    format: ImageFormat
    original_size: tuple[int, int]  # (width, height) after EXIF rotation
    scale: float = 1.0
    factor: int = 1  # libjpeg reduction the pixels were decoded at (1, 2, 4, 8)
    encoded: bytes | None = field(default=None, repr=False)  # kept when factor > 1, for decode_at

    def decode_at(self, factor: int) -> np.ndarray:
        """The same image decoded at a finer reduction (factor < self.factor), EXIF rotation applied."""
        if self.encoded is None or factor >= self.factor:
            return self.pixels
        pixels = cv2.imdecode(np.frombuffer(self.encoded, dtype=np.uint8), _REDUCED_FLAGS[factor])
        return self.pixels if pixels is None else pixels


def sniff_format(data: bytes) -> ImageFormat | None:
    """Recognise the format from the first bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if data.startswith(b"BM"):
        return ImageFormat.BMP
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageFormat.TIFF
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ImageFormat.GIF
    return None


def _header_size(data: bytes, fmt: ImageFormat) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) from the header alone: Pillow opens lazily."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                orientation = 1
                if fmt in (ImageFormat.JPEG, ImageFormat.WEBP, ImageFormat.TIFF, ImageFormat.PNG):
                    try:
                        orientation = int(im.getexif().get(0x0112, 1) or 1)
                    except Exception:  # a broken EXIF block must not reject a good image
                        orientation = 1
    except Exception as exc:
        raise BadImage(f"cannot read the {fmt.value.upper()} header: the file is corrupt or truncated") from exc
    if width <= 0 or height <= 0:
        raise BadImage(f"image has invalid dimensions {width}x{height}")
    return width, height, orientation


def _reduction_for(fmt: ImageFormat, width: int, height: int) -> int:
    if fmt is not ImageFormat.JPEG:
        return 1
    factor = 1
    for f in (2, 4, 8):
        if max(width, height) / f >= MIN_DECODE_LONG_SIDE:
            factor = f
    return factor


_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


def _decode_with_pillow(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as opened:
            opened.seek(0)  # first frame of animations
            im: Image.Image = ImageOps.exif_transpose(opened)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            if im.mode.startswith("I;16") or im.mode == "I":
                arr16 = np.asarray(im, dtype=np.float32)
                peak = max(float(arr16.max()), 1.0)
                grey = np.clip(arr16 * (255.0 / (65535.0 if peak > 255 else 255.0)), 0, 255).astype(np.uint8)
                return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
            rgb = np.asarray(im.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Validate and decode. Raises ImageTooLarge, UnsupportedImage or BadImage with a message naming why."""
    if len(data) == 0:
        raise BadImage("the file is empty")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"file is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImage("not an image: expected JPEG, PNG, WebP, BMP, TIFF or GIF data")
    width, height, orientation = _header_size(data, fmt)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the "
            f"{max_pixels / 1e6:.0f} megapixel limit"
        )
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    factor = _reduction_for(fmt, width, height)
    pixels: np.ndarray | None = None
    if fmt in (ImageFormat.JPEG, ImageFormat.PNG, ImageFormat.WEBP, ImageFormat.BMP):
        # OpenCV handles EXIF orientation, grey, CMYK and 16-bit for these, and drops alpha. PNG/WebP
        # with alpha go through Pillow so transparent areas become white, not whatever lies beneath.
        has_alpha = fmt in (ImageFormat.PNG, ImageFormat.WEBP) and _has_alpha(data)
        if not has_alpha:
            buf = np.frombuffer(data, dtype=np.uint8)
            pixels = cv2.imdecode(buf, _REDUCED_FLAGS[factor])
            if pixels is not None and pixels.ndim == 2:
                pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels is None:
        factor = 1
        try:
            pixels = _decode_with_pillow(data)
        except Exception as exc:
            raise BadImage(f"cannot decode the {fmt.value.upper()} data: the file is corrupt or truncated") from exc
    if pixels.dtype != np.uint8:
        pixels = cv2.convertScaleAbs(pixels, alpha=255.0 / 65535.0)
    scale = width / pixels.shape[1] if pixels.shape[1] else 1.0
    return DecodedImage(pixels=np.ascontiguousarray(pixels), format=fmt, original_size=(width, height),
                        scale=scale, factor=factor, encoded=data if factor > 1 else None)


def _has_alpha(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    except Exception:
        return False


def read_image_bytes(path: Path, *, max_bytes: int) -> bytes:
    """Read a file from disk, refusing oversized files before reading them."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImage(f"cannot read {path}: {exc.strerror}") from exc
    if size > max_bytes:
        raise ImageTooLarge(f"file is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot read {path}: {exc.strerror}") from exc


def read_image_file(path: Path, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Read and decode a file from disk, refusing oversized files before reading them."""
    data = read_image_bytes(path, max_bytes=max_bytes)
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)


def crop_thumbnail(image: np.ndarray, bbox: tuple[float, float, float, float], *, size: int,
                   margin: float = 0.25) -> np.ndarray:
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
