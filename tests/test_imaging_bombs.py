"""Hostile images: decompression bombs, truncated and garbage headers, headers that lie about the data.

Bombs are real files built cheaply here: a PNG is IHDR plus one zlib stream of zeros assembled from one
compressed segment repeated (a full flush makes segments independent); a BMP is RLE8 runs; the others are
written by Pillow from a flat image.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import BadImage, ImageTooLarge, OceanoError, UnsupportedImage
from app.imaging import ImageFormat, ImageHeader, decode_image, decoded_pixels_estimate, read_header
from app.imaging.decode import _decode_displayed
from tests.support import counting_decoders, png_chunk, zero_png

MB = 2**20
LIMITS = {"max_bytes": 20 * MB, "max_pixels": 50_000_000}
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ builders
def rle8_bmp(width: int, height: int) -> bytes:
    """A flat 8-bit BMP, run-length encoded: runs of 255 pixels, an end-of-line per row."""
    runs = [255] * (width // 255) + ([width % 255] if width % 255 else [])
    row = b"".join(bytes([run, 7]) for run in runs) + b"\x00\x00"
    pixels = row * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


SIDE_49MP = 7000  # 7000 x 7000 = 49 MP: under the default 50 MP cap
FLAT_BUILDERS: dict[str, Callable[[], bytes]] = {
    "png": lambda: zero_png(SIDE_49MP, SIDE_49MP),
    "bmp": lambda: rle8_bmp(SIDE_49MP, SIDE_49MP),
    "webp": lambda: pil_bytes(Image.new("RGB", (SIDE_49MP, SIDE_49MP)), "WEBP", lossless=True, method=0),
    "gif": lambda: pil_bytes(Image.new("L", (SIDE_49MP, SIDE_49MP)), "GIF"),
    "tiff": lambda: pil_bytes(Image.new("L", (SIDE_49MP, SIDE_49MP)), "TIFF", compression="packbits"),
}
_built: dict[str, bytes] = {}


def flat_49mp(fmt: str) -> bytes:
    if fmt not in _built:
        _built[fmt] = FLAT_BUILDERS[fmt]()
    return _built[fmt]


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    return zero_png(40_000, 40_000)


# ------------------------------------------------------------------------------------------------ measuring
def _status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:  # Linux: "5" resets VmHWM (the peak RSS) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Usage:
    decoder_calls: int  # calls of OpenCV's or Pillow's decoder in one run
    traced_peak: int  # bytes allocated through Python's allocators (numpy included), from a second run
    rss_growth: int | None  # bytes the peak RSS grew by in the plain run (every allocator), where measurable


def measure(call: Callable[[], object], raises: type[Exception], match: str | None = None) -> Usage:
    """Run `call` twice, each time expecting `raises`: once plain, counting the decoders it reached, with the peak
    RSS reset first (tracemalloc slows Python-heavy parsing tenfold), once under tracemalloc."""
    reset = _reset_peak_rss()
    rss_before = _status_kb("VmRSS")
    with counting_decoders() as calls, pytest.raises(raises, match=match):
        call()
    peak = _status_kb("VmHWM")
    rss_growth = (peak - rss_before) * 1024 if reset and rss_before is not None and peak is not None else None
    tracemalloc.start()
    try:
        with pytest.raises(raises, match=match):
            call()
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return Usage(sum(calls.values()), traced_peak, rss_growth)


def assert_cheap(usage: Usage, *, decoders: int = 0, memory: int = 50 * MB) -> None:
    """Refused after at most `decoders` decoder calls (0: from the header alone), within `memory` bytes."""
    assert usage.decoder_calls <= decoders, usage
    assert usage.traced_peak < memory, usage
    if usage.rss_growth is not None:
        assert usage.rss_growth < memory, usage


# ------------------------------------------------------------------------------------------------ bombs
def test_builders_make_real_images() -> None:
    small = zero_png(300, 200, segment=1000)  # several repeated segments, like the big ones
    with Image.open(io.BytesIO(small)) as im:
        assert im.size == (300, 200) and np.asarray(im).max() == 0
    with Image.open(io.BytesIO(rle8_bmp(600, 40))) as im:
        assert im.size == (600, 40) and np.asarray(im).max() == 7


def test_png_bomb_refused_from_the_header(png_bomb: bytes) -> None:
    assert len(png_bomb) < 2 * MB  # 1.6 gigapixels in 1.5 MB
    assert_cheap(measure(lambda: decode_image(png_bomb, **LIMITS), ImageTooLarge, "40000x40000"))
    assert_cheap(measure(lambda: decoded_pixels_estimate(png_bomb, **LIMITS), ImageTooLarge))


@pytest.mark.parametrize("fmt", sorted(FLAT_BUILDERS))
def test_flat_49mp_refused_under_a_lower_cap_without_decoding(fmt: str) -> None:
    data = flat_49mp(fmt)
    assert len(data) < LIMITS["max_bytes"]
    header = read_header(data)
    assert header.format is ImageFormat(fmt) and (header.width, header.height) == (SIDE_49MP, SIDE_49MP)
    # Under the 50 MP cap the estimate prices the full decode for a per-request budget, from the header alone.
    with counting_decoders() as calls:
        assert decoded_pixels_estimate(data, **LIMITS) == SIDE_49MP**2
    assert not calls
    # A 24 MP cap (or a spent budget) refuses it before any decoder sees it.
    capped = {"max_bytes": LIMITS["max_bytes"], "max_pixels": 24_000_000}
    assert_cheap(measure(lambda: decode_image(data, **capped), ImageTooLarge, "49.0 megapixels"))


def test_flat_49mp_png_under_the_cap_keeps_only_reduced_pixels() -> None:
    decoded = decode_image(flat_49mp("png"), **LIMITS)
    assert decoded.factor == 8 and decoded.pixels.shape == (875, 875, 3)
    assert decoded.scale == pytest.approx(8.0) and decoded.original_size == (SIDE_49MP, SIDE_49MP)
    assert decoded.pixels.nbytes < 3 * MB  # the 147 MB full-size array did not survive the decode


# ------------------------------------------------------------------------------------------------ truncation
def small_samples() -> dict[str, bytes]:
    image = Image.new("RGB", (40, 30), (200, 40, 90))
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "jpeg": pil_bytes(image, "JPEG", exif=exif.tobytes()),
        "png": pil_bytes(image, "PNG", exif=exif.tobytes()),
        "webp": pil_bytes(image, "WEBP", exif=exif.tobytes()),
        "webp_lossless": pil_bytes(image, "WEBP", lossless=True),
        "bmp": pil_bytes(image, "BMP"),
        "tiff": pil_bytes(image, "TIFF", exif=exif.tobytes()),
        "gif": pil_bytes(image, "GIF", comment=b"x" * 600),
    }


SMALL = small_samples()
RAISED = (BadImage, UnsupportedImage, ImageTooLarge)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_truncated_files_give_bad_image(name: str) -> None:
    data = SMALL[name]
    assert decode_image(data, **LIMITS).original_size in ((40, 30), (30, 40))
    cut_points = list(range(0, min(len(data), 400))) + list(range(400, len(data), 37))
    for cut in cut_points:
        prefix = data[:cut]
        try:
            read_header(prefix)
        except (BadImage, UnsupportedImage):
            pass  # the only errors a header may give
        try:
            decoded = decode_image(prefix, **LIMITS)
        except (BadImage, UnsupportedImage):
            continue
        # libjpeg fills a short scan with grey: what comes back must still be the whole image.
        assert decoded.pixels.shape[:2] == (40, 30), f"{name} cut at {cut}"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_garbage_in_headers_never_raises_anything_else(name: str) -> None:
    rng = random.Random(f"oceano-{name}")  # fixed seed per format: failures reproduce
    data = SMALL[name]
    small_cap = {"max_bytes": LIMITS["max_bytes"], "max_pixels": 1_000_000}  # mutated sizes stay cheap
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(min(len(mutated), 160))
            mutated[at] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        if rng.random() < 0.3:  # a length field pointing far beyond the data
            at = rng.randrange(min(len(mutated) - 4, 160))
            mutated[at : at + 4] = b"\xff\xff\xff\xf0"
        try:
            header = read_header(bytes(mutated))
            assert header.width > 0 and header.height > 0 and 1 <= header.orientation <= 8
        except (BadImage, UnsupportedImage):
            pass
        try:
            decode_image(bytes(mutated), **small_cap)
        except RAISED:
            pass


def test_pure_garbage_is_refused() -> None:
    rng = random.Random(7)
    for _ in range(300):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        with pytest.raises((BadImage, UnsupportedImage)):
            decode_image(blob, **LIMITS)
    for signature in (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP", b"BM", b"II*\0", b"MM\0*", b"GIF89a"):
        with pytest.raises(BadImage, match="corrupt or truncated"):
            decode_image(signature + b"\0" * 3, **LIMITS)


HOSTILE_STRUCTURES = {
    # thousands of empty comment segments before any frame header
    "jpeg_many_segments": b"\xff\xd8" + b"\xff\xfe\x00\x02" * 100_000 + b"\xff\xd9",
    # an endless run of fill bytes
    "jpeg_fill": b"\xff\xd8" + b"\xff" * 1_000_000,
    # a segment length shorter than its own length field
    "jpeg_short_length": b"\xff\xd8\xff\xe0\x00\x01" + b"\0" * 64,
    # a GIF whose first extension is made of a million one-byte sub-blocks
    "gif_sub_blocks": b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b"\x21\xfe" + b"\x01x" * 500_000,
    # a TIFF whose first IFD claims 65535 entries in 40 bytes
    "tiff_ifd_count": b"II*\x00" + struct.pack("<IH", 8, 65535) + b"\0" * 40,
    # a TIFF IFD offset beyond the end
    "tiff_ifd_offset": b"II*\x00" + struct.pack("<I", 0xFFFFFFF0) + b"\0" * 40,
    # a WebP whose first chunk claims 4 GB
    "webp_chunk_length": b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WEBPVP8X" + struct.pack("<I", 0xFFFFFFF0),
    # a BMP with an unknown DIB header size
    "bmp_dib": b"BM" + b"\0" * 12 + struct.pack("<I", 0xFFFFFFFF) + b"\0" * 40,
    # a tiny PNG whose IDAT claims 4 GB: OpenCV's reader would allocate that much before failing
    "png_chunk_length": (lambda png: png[:33] + b"\xf0\x00\x00\x2e" + png[37:])(zero_png(40, 30)),
    # a PNG whose first chunk is not IHDR
    "png_no_ihdr": b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"a\0b") + png_chunk(b"IEND", b""),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_STRUCTURES))
def test_hostile_structures_end_quickly_in_bad_image(name: str) -> None:
    # At most OpenCV then Pillow, each once; bounded memory. Time is bench/hostile.py's to measure.
    assert_cheap(measure(lambda: decode_image(HOSTILE_STRUCTURES[name], **LIMITS), BadImage), decoders=2)


def test_many_chunks_before_idat_do_not_hide_the_size() -> None:
    # 50000 chunks before IDAT: the walk that checks every chunk length stays cheap, the size comes from IHDR.
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40_000, 40_000, 8, 0, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"tEXt", b"k\0v") * 50_000 + zero_png(1, 1)[33:]
    assert_cheap(measure(lambda: decode_image(data, **LIMITS), ImageTooLarge))


# ------------------------------------------------------------------------------------------------ lying headers
def two_frame_headers_jpeg() -> bytes:
    """A JPEG whose first frame header says 64x48 and a second one 30000x30000: our parser and libjpeg take the
    first, Pillow the last."""
    plain = pil_bytes(Image.new("RGB", (64, 48), (10, 200, 30)), "JPEG")
    at = plain.index(b"\xff\xc0")
    (length,) = struct.unpack(">H", plain[at + 2 : at + 4])
    huge = bytearray(plain[at : at + 2 + length])
    huge[5:9] = struct.pack(">HH", 30_000, 30_000)
    return plain[: at + 2 + length] + bytes(huge) + plain[at + 2 + length :]


def webp_canvas_smaller_than_frame() -> bytes:
    lossless = pil_bytes(Image.new("RGB", (4000, 4000)), "WEBP", lossless=True, method=0)
    frame = lossless[12:]  # the VP8L chunk
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0, 0, 0, 0]) + (15).to_bytes(3, "little") * 2  # 16 x 16
    body = b"WEBP" + vp8x + frame
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("build", [two_frame_headers_jpeg, webp_canvas_smaller_than_frame])
def test_lying_headers_give_bad_image(build: Callable[[], bytes]) -> None:
    data = build()
    assert_cheap(measure(lambda: decode_image(data, **LIMITS), BadImage), decoders=2)


def test_data_bigger_than_the_header_is_caught_after_the_decoder() -> None:
    # A parser disagreement, forced: our header says 100x100, the data is 3000x2000. In this process OpenCV's
    # own limit is its default (pytest imported cv2 first), so the size check after decoding must catch it.
    data = zero_png(3000, 2000)
    forged = ImageHeader(ImageFormat.PNG, 100, 100)
    with pytest.raises(BadImage, match="header says 100x100"):
        _decode_displayed(data, forged, 1)


OPENCV_LIMIT_SCRIPT = r"""
import json, re, struct, sys, zlib
from pathlib import Path
import app.imaging as imaging  # first: sets OPENCV_IO_MAX_IMAGE_PIXELS before cv2 is imported
import app.imaging.decode
import cv2
import numpy as np
from app.errors import BadImage

def zero_png(w, h):
    total = (w + 1) * h
    raw = zlib.compress(bytes(total), 9)
    def chunk(k, p): return struct.pack(">I", len(p)) + k + p + struct.pack(">I", zlib.crc32(k + p))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))

def hwm(): return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
out = {"limit": imaging.OPENCV_MAX_PIXELS}
two_mp = zero_png(2000, 1000)
try:
    cv2.imdecode(np.frombuffer(two_mp, np.uint8), cv2.IMREAD_COLOR)
    out["opencv_refused"] = False
except cv2.error:
    out["opencv_refused"] = True
# the caller's cap above OpenCV's: decoded through Pillow instead of refused
out["decoded_shape"] = list(imaging.decode_image(two_mp, max_bytes=1 << 24, max_pixels=4_000_000).pixels.shape)
# a forged header below the limit over 64 MP of data: OpenCV refuses before allocating
big = zero_png(8000, 8000)
Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS to the current RSS
before = int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
try:
    imaging.decode._decode_displayed(big, imaging.ImageHeader(imaging.ImageFormat.PNG, 100, 100), 1)
    out["lying"] = "decoded"
except BadImage as exc:
    out["lying"] = exc.message
out["lying_rss_growth_kb"] = hwm() - before
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_opencv_limit_follows_max_megapixels_when_imaging_comes_first() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    env["MAX_MEGAPIXELS"] = "1"
    run = subprocess.run(
        [sys.executable, "-c", OPENCV_LIMIT_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["limit"] == 1_000_000
    assert out["opencv_refused"] is True  # the variable reached OpenCV
    assert out["decoded_shape"] == [500, 1000, 3]  # reduced by 2, long side >= 640
    assert "larger than its header says" in out["lying"]
    assert out["lying_rss_growth_kb"] < 50 * 1024  # refused before the 192 MB array was allocated


def test_oceano_errors_only(png_bomb: bytes) -> None:
    # The public entry points raise OceanoError subclasses (the HTTP layer maps them) for every hostile input.
    for data in [png_bomb, *HOSTILE_STRUCTURES.values(), two_frame_headers_jpeg(), b"", b"\0" * 10]:
        with pytest.raises(OceanoError):
            decode_image(data, **LIMITS)
