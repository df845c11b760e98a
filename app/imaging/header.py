"""Image headers parsed from the bytes with `struct`, before any decoder sees them: format, size, EXIF
orientation, alpha. Every loop is capped and every length checked: bad input ends in BadImage or
UnsupportedImage, never in an allocation the header did not announce."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import StrEnum

from app.errors import BadImage, ImageTooLarge, UnsupportedImage

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# Keep at least this many pixels on the long side when decoding at a reduced scale: the detector never sees
# more than 640. Faces too small in the reduced image for a sharp 112x112 crop are aligned from a finer decode
# of the same bytes (DecodedImage.decode_at), which the engine asks for only when it finds such faces.
MIN_DECODE_LONG_SIDE = 640
JPEG_MAX_FACTOR = 8  # libjpeg scales by 1/2, 1/4, 1/8


class ImageFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    BMP = "bmp"
    TIFF = "tiff"
    GIF = "gif"


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header says, before any pixel is decoded. width and height are as stored, before EXIF rotation."""

    format: ImageFormat
    width: int
    height: int
    orientation: int = 1  # EXIF orientation, 1..8
    has_alpha: bool = False
    progressive: bool = False  # JPEG: libjpeg holds full-size coefficients even when it scales the output

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


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


# ---------------------------------------------------------------------------------------------- header parsing
# Every length read from the file is checked against the data before use; every loop has a fixed cap, so that
# garbage ends in BadImage quickly, never in another exception or a long walk.
_MAX_JPEG_SEGMENTS = 1024  # real files have a few dozen before the frame header
_MAX_JPEG_FILL = 64  # 0xFF fill bytes allowed before a marker
_MAX_PNG_CHUNKS = 200_000  # libpng writes 8 KB IDAT chunks: a 20 MB file holds ~2600
_MAX_WEBP_CHUNKS = 65536  # animations hold one ANMF chunk per frame, EXIF comes after them
_MAX_GIF_BLOCKS = 100_000  # extension sub-blocks before the first image descriptor
_MAX_IFD_ENTRIES = 1024


class _Corrupt(Exception):
    """Raised inside the parsers; read_header turns it into BadImage with the format's name."""


def _unpack(fmt: str, data: bytes, offset: int) -> tuple[int, ...]:
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise _Corrupt("truncated")
    return struct.unpack_from(fmt, data, offset)


def _ifd_values(tiff: bytes, tags: frozenset[int]) -> dict[int, int]:
    """The first value of each wanted SHORT or LONG tag of the first IFD of a TIFF structure (a TIFF file or an
    EXIF block)."""
    endian = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if endian is None:
        raise _Corrupt("bad TIFF byte order")
    magic, offset = _unpack(endian + "HI", tiff, 2)
    if magic != 42:
        raise _Corrupt("bad TIFF magic")
    (count,) = _unpack(endian + "H", tiff, offset)
    values: dict[int, int] = {}
    for i in range(min(count, _MAX_IFD_ENTRIES)):
        tag, kind, n = _unpack(endian + "HHI", tiff, offset + 2 + 12 * i)
        if tag in tags and n >= 1 and tag not in values:
            if kind == 3:  # SHORT, left-aligned in the 4-byte value field
                values[tag] = _unpack(endian + "H", tiff, offset + 10 + 12 * i)[0]
            elif kind == 4:  # LONG
                values[tag] = _unpack(endian + "I", tiff, offset + 10 + 12 * i)[0]
    return values


_ORIENTATION_TAG = 0x0112


def _exif_orientation(block: bytes) -> int:
    """Orientation from an EXIF block (TIFF structure, with or without the JPEG-style 'Exif\\0\\0' prefix). A
    broken block must not reject a good image: it reads as 1 (as stored)."""
    if block.startswith(b"Exif\x00\x00"):
        block = block[6:]
    try:
        value = _ifd_values(block, frozenset({_ORIENTATION_TAG})).get(_ORIENTATION_TAG, 1)
    except _Corrupt:
        return 1
    return value if 1 <= value <= 8 else 1


_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0..7: no length field


def _jpeg_header(data: bytes) -> ImageHeader:
    pos = 2
    orientation: int | None = None
    for _ in range(_MAX_JPEG_SEGMENTS):
        if _unpack("B", data, pos)[0] != 0xFF:
            raise _Corrupt("marker expected")
        fill = 0
        while _unpack("B", data, pos)[0] == 0xFF:
            pos += 1
            fill += 1
            if fill > _MAX_JPEG_FILL:
                raise _Corrupt("too many fill bytes")
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI, EOI or the first scan before any frame header
            raise _Corrupt("no frame header")
        (length,) = _unpack(">H", data, pos)
        if length < 2 or pos + length > len(data):
            raise _Corrupt("bad segment length")
        segment = data[pos + 2 : pos + length]
        if marker in _JPEG_SOF:
            _, height, width, components = _unpack(">BHHB", segment, 0)
            if width == 0 or height == 0 or components == 0:
                raise _Corrupt(f"invalid dimensions {width}x{height}")
            return ImageHeader(
                ImageFormat.JPEG, width, height, orientation or 1, progressive=marker in _JPEG_PROGRESSIVE
            )
        if marker == 0xE1 and orientation is None and segment.startswith(b"Exif\x00\x00"):
            orientation = _exif_orientation(segment)  # the first Exif APP1 counts, as for libjpeg users
        pos += length
    raise _Corrupt("too many segments before the frame header")


def _png_header(data: bytes) -> ImageHeader:
    length, kind = _unpack(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:
        raise _Corrupt("IHDR must come first")
    width, height, _depth, colour = _unpack(">IIBB", data, 16)
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise _Corrupt(f"invalid dimensions {width}x{height}")
    has_alpha = colour in (4, 6)
    orientation = 1
    pos = 8 + 12 + 13
    before_image = True
    # Every chunk length is checked, not only up to IDAT: OpenCV's PNG reader allocates what a chunk declares
    # (measured: a 1.3 KB file whose IDAT claims 4 GB cost 4 s and 3.8 GB of RSS before failing).
    for _ in range(_MAX_PNG_CHUNKS):
        if pos + 8 > len(data):
            break  # no IEND: the decoder decides whether the image data is complete
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > len(data):
            raise _Corrupt(f"{kind!r} chunk runs past the end of the file")
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            before_image = False  # ancillary data after the image data is not read (as Pillow's open)
        elif before_image and kind == b"tRNS":
            has_alpha = True
        elif before_image and kind == b"eXIf":
            orientation = _exif_orientation(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    else:
        raise _Corrupt("too many chunks")
    return ImageHeader(ImageFormat.PNG, width, height, orientation, has_alpha=has_alpha)


def _webp_frame_size(kind: bytes, payload: bytes) -> tuple[int, int, bool]:
    """(width, height, alpha hint) of a VP8 or VP8L bitstream."""
    if kind == b"VP8 ":
        if payload[3:6] != b"\x9d\x01\x2a":
            raise _Corrupt("bad VP8 start code")
        width, height = _unpack("<HH", payload, 6)
        return width & 0x3FFF, height & 0x3FFF, False
    if _unpack("B", payload, 0)[0] != 0x2F:
        raise _Corrupt("bad VP8L signature")
    (bits,) = _unpack("<I", payload, 1)
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)


def _webp_header(data: bytes) -> ImageHeader:
    (riff_size,) = _unpack("<I", data, 4)
    end = min(len(data), 8 + riff_size)
    pos = 12
    canvas: tuple[int, int] | None = None
    frame: tuple[int, int] | None = None
    has_alpha = False
    orientation = 1
    for _ in range(_MAX_WEBP_CHUNKS):
        if pos + 8 > end:
            break
        kind, length = struct.unpack_from("<4sI", data, pos)
        payload = data[pos + 8 : min(pos + 8 + length, end)]
        if kind == b"VP8X":
            flags, _, w_lo, w_hi, h_lo, h_hi = _unpack("<B3sHBHB", payload, 0)  # sides - 1, 24-bit LE
            canvas = ((w_lo | w_hi << 16) + 1, (h_lo | h_hi << 16) + 1)
            has_alpha = bool(flags & 0x10)
        elif kind in (b"VP8 ", b"VP8L") and frame is None:
            width, height, alpha = _webp_frame_size(kind, payload)
            frame = (width, height)
            has_alpha = has_alpha or alpha
        elif kind == b"EXIF":
            orientation = _exif_orientation(payload)
        if canvas is None and frame is not None:
            break  # a simple file (no VP8X): nothing else is read
        pos += 8 + length + (length & 1)  # chunks are padded to an even size
    size = canvas or frame
    if size is None:
        raise _Corrupt("no VP8X, VP8 or VP8L chunk")
    if canvas is not None and frame is not None and canvas != frame:
        raise _Corrupt(f"canvas {canvas} and frame {frame} disagree")  # libwebp refuses these too
    width, height = size
    if width == 0 or height == 0:
        raise _Corrupt(f"invalid dimensions {width}x{height}")
    return ImageHeader(ImageFormat.WEBP, width, height, orientation, has_alpha=has_alpha)


def _tiff_header(data: bytes) -> ImageHeader:
    values = _ifd_values(data, frozenset({256, 257, _ORIENTATION_TAG}))
    width, height = values.get(256, 0), values.get(257, 0)
    if width == 0 or height == 0:
        raise _Corrupt("no image width or length in the first IFD")
    orientation = values.get(_ORIENTATION_TAG, 1)
    return ImageHeader(ImageFormat.TIFF, width, height, orientation if 1 <= orientation <= 8 else 1)


def _gif_header(data: bytes) -> ImageHeader:
    screen_w, screen_h, flags = _unpack("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # skip the global colour table
    blocks = 0
    while True:
        (introducer,) = _unpack("B", data, pos)
        if introducer == 0x2C:  # the first image descriptor
            left, top, width, height = _unpack("<HHHH", data, pos + 1)
            # Pillow grows the canvas to hold a first frame that overflows the logical screen; so do we.
            width, height = max(screen_w, left + width), max(screen_h, top + height)
            if width == 0 or height == 0:
                raise _Corrupt(f"invalid dimensions {width}x{height}")
            return ImageHeader(ImageFormat.GIF, width, height)
        if introducer != 0x21:  # anything but an extension (the trailer included) before the first image
            raise _Corrupt("no image descriptor")
        pos += 2
        while True:  # data sub-blocks, each prefixed by its length, ended by a zero length
            blocks += 1
            if blocks > _MAX_GIF_BLOCKS:
                raise _Corrupt("too many blocks before the first image")
            (size,) = _unpack("B", data, pos)
            pos += 1 + size
            if size == 0:
                break


def _bmp_header(data: bytes) -> ImageHeader:
    (dib_size,) = _unpack("<I", data, 14)
    if dib_size == 12:  # BITMAPCOREHEADER: unsigned 16-bit sides
        width, height = _unpack("<HH", data, 18)
    elif dib_size in (16, 40, 52, 56, 64, 108, 124):
        width, height = _unpack("<ii", data, 18)
        height = abs(height)  # negative: rows stored top-down
    else:
        raise _Corrupt(f"unknown DIB header size {dib_size}")
    if width <= 0 or height <= 0 or height >= 2**31:
        raise _Corrupt(f"invalid dimensions {width}x{height}")
    return ImageHeader(ImageFormat.BMP, width, height)


_PARSERS = {
    ImageFormat.JPEG: _jpeg_header,
    ImageFormat.PNG: _png_header,
    ImageFormat.WEBP: _webp_header,
    ImageFormat.TIFF: _tiff_header,
    ImageFormat.GIF: _gif_header,
    ImageFormat.BMP: _bmp_header,
}


def read_header(data: bytes) -> ImageHeader:
    """Format, stored size, EXIF orientation and alpha from the header bytes alone (nothing is decoded).
    Raises BadImage (empty, truncated, corrupt) or UnsupportedImage."""
    if len(data) == 0:
        raise BadImage("the file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImage("not an image: expected JPEG, PNG, WebP, BMP, TIFF or GIF data")
    try:
        return _PARSERS[fmt](data)
    except (_Corrupt, struct.error) as exc:
        raise BadImage(f"cannot read the {fmt.value.upper()} header: the file is corrupt or truncated ({exc})") from exc


def checked_header(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageHeader:
    """read_header, then the size and pixel caps (ImageTooLarge): what decode_image checks before decoding. A
    caller that needs the header first (to charge a decode budget) passes it on to decode_image."""
    if len(data) > max_bytes:
        raise ImageTooLarge(f"file is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    header = read_header(data)
    if header.pixels > max_pixels:
        raise ImageTooLarge(
            f"image is {header.width}x{header.height} ({header.pixels / 1e6:.1f} megapixels), over the "
            f"{max_pixels / 1e6:.0f} megapixel limit"
        )
    return header


def _reduction_for(header: ImageHeader, long_side: int) -> int:
    """The largest power of two that keeps at least `long_side` pixels on the long side (1/8 at most for JPEG,
    libjpeg's limit, as before)."""
    longest = max(header.width, header.height)
    cap = JPEG_MAX_FACTOR if header.format is ImageFormat.JPEG else 1 << 30
    factor = 1
    while factor * 2 <= cap and longest / (factor * 2) >= long_side:
        factor *= 2
    return factor


def decoded_pixels_estimate(data: bytes, *, max_bytes: int, max_pixels: int) -> int:
    """Pixels the decoder will hold at its peak for these bytes, from the header alone: what a caller charges to a
    per-request budget before decoding. Raises what decode_image would for the same limits (ImageTooLarge,
    UnsupportedImage, BadImage from the header). Baseline JPEG is scaled by libjpeg as it decodes; every other
    format (progressive JPEG included: full-size coefficient buffers) is held in full before being reduced."""
    return decoded_pixels(checked_header(data, max_bytes=max_bytes, max_pixels=max_pixels))


def decoded_pixels(header: ImageHeader) -> int:
    """Pixels the decoder will hold at its peak for an image with this header (see decoded_pixels_estimate)."""
    if header.format is ImageFormat.JPEG and not header.progressive:
        factor = _reduction_for(header, MIN_DECODE_LONG_SIDE)
        return math.ceil(header.width / factor) * math.ceil(header.height / factor)
    return header.pixels
